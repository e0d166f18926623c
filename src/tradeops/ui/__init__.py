"""The approver web pages (/ui): Jinja2 templates, htmx served from here, no build step.

`install.py` mounts them on the application (`install_ui`); this package's face imports
nothing, so its modules import one another without a circle through it.
"""
