"""One way to keep a write although the command fails (issue 13 item 6).

`db.uow.record_despite_failure` commits its record in a transaction of its own, after the
failed command's rolled back: sign-in counts a wrong password with it, MCP audits a failed
tool call with it. Nothing of the failed command survives; the record does, with its
request id; and a record that cannot be written is an error, not a silent loss.
"""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeops.agents import server
from tradeops.audit import recording as audit
from tradeops.auth import sign_in
from tradeops.auth.principal import SYSTEM
from tradeops.db.uow import UnitOfWork, in_transaction, record_despite_failure


class CommandFailed(Exception):
    pass


async def _events(owner_engine: AsyncEngine) -> list[tuple[str, str, str | None]]:
    async with owner_engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT action, actor, request_id FROM audit_events ORDER BY id")
        )
        return [(r.action, r.actor, r.request_id) for r in rows]


async def _fail_after_writing(uow: UnitOfWork) -> None:
    await uow.set_context(SYSTEM, "req-1")
    await audit.record(uow, SYSTEM, "test.half_done", "test", 1)
    raise CommandFailed


async def test_the_record_commits_and_the_failed_command_does_not(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    with pytest.raises(CommandFailed):
        await in_transaction(app.state.db, _fail_after_writing)

    async def failure(uow: UnitOfWork) -> None:
        await audit.record(uow, SYSTEM, "test.failed", "test", 1)

    await record_despite_failure(app.state.db, failure, principal=SYSTEM, request_id="req-1")

    assert await _events(owner_engine) == [("test.failed", "user:0", "req-1")]


async def test_without_a_principal_the_request_id_is_kept(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    async def failure(uow: UnitOfWork) -> None:
        await audit.record(uow, None, "login.failed", "login", "x@bank.test")

    await record_despite_failure(app.state.db, failure, request_id="req-2")

    assert await _events(owner_engine) == [("login.failed", "anonymous", "req-2")]


async def test_a_record_that_cannot_be_written_is_an_error(
    app: FastAPI, owner_engine: AsyncEngine
) -> None:
    async def broken(uow: UnitOfWork) -> None:
        await audit.record(uow, SYSTEM, "test.failed", "test", 1)
        raise CommandFailed

    with pytest.raises(CommandFailed):
        await record_despite_failure(app.state.db, broken, principal=SYSTEM)

    assert await _events(owner_engine) == []


def test_sign_in_and_mcp_keep_their_failures_the_same_way() -> None:
    # The two writes that outlive a failure go through the one mechanism, not a second
    # transaction of their own making (the issue found two ways).
    for module in (sign_in, server):
        assert "record_despite_failure(" in inspect.getsource(module)
        assert "run_in_transaction(" not in inspect.getsource(module)
