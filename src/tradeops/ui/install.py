"""Mounting the approver pages on the application: routes, static files, session signer."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from tradeops.ui.router import router, sign_in_router, stream_router
from tradeops.ui.session import Sessions

STATIC = Path(__file__).parent / "static"
FAVICON = STATIC / "favicon.svg"


async def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico whatever the page links: the same icon, not a 404."""
    return FileResponse(
        FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"}
    )


def install_ui(app: FastAPI) -> None:
    """The pages' routes, their static files and the session signer (after app.state.settings)."""
    app.state.ui_sessions = Sessions(app.state.settings)
    app.include_router(sign_in_router)
    app.include_router(stream_router)  # before /ui/orders/{order_id}
    app.include_router(router)
    app.add_api_route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
