"""The application's async engine (SQLAlchemy 2 + asyncpg)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tradeops.db.urls import asyncpg_url
from tradeops.settings import Settings


def create_engine(settings: Settings, database_url: str) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(database_url),
        pool_size=settings.pool_size,
        max_overflow=settings.pool_max_overflow,
        pool_timeout=settings.pool_timeout_seconds,
        pool_recycle=1800,
        connect_args={
            "server_settings": {
                "application_name": "tradeops",
                "statement_timeout": str(settings.statement_timeout_ms),
                # A transaction left open by a crashed request must not hold locks forever.
                "idle_in_transaction_session_timeout": "60000",
            }
        },
    )
