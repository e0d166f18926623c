"""The approver web pages (/ui): Jinja2 templates, htmx served from here, no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from tradeops.ui.router import router, sign_in_router
from tradeops.ui.session import Sessions

STATIC = Path(__file__).parent / "static"


def install_ui(app: FastAPI) -> None:
    """The pages' routes, their static files and the session signer (after app.state.settings)."""
    app.state.ui_sessions = Sessions(app.state.settings)
    app.include_router(sign_in_router)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
