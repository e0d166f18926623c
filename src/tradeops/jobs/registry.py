"""The procrastinate App the tasks register on, apart from the worker that runs them.

Its own module so that tasks.py (which registers on it) and app.py (the worker, which imports
the tasks) import it without importing each other. The connector is set when a worker (or a
test) knows the database URL: see `app.connector_for`.
"""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(), import_paths=["tradeops.jobs.tasks"])
