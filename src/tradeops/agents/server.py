"""The MCP server: the tool catalogue on the SDK's low-level `Server`, one transaction a call.

The low-level server rather than `MCPServer`: the tools' input schemas are our own request
models, validated by us, so a malformed argument is the same 422 problem as over HTTP, and
every call — refused, failed or done — passes through one place that audits it.

Each call runs in its own transaction whose first statement identifies the caller (the
transport decides how: see `Caller`), then the tool's service call, then the call's audit
event. A failed call is rolled back and audited afterwards in a transaction of its own
(db.uow.record_despite_failure, as sign-in counts a wrong password).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal

import mcp_types as types
import orjson
import structlog
from mcp.server import Server, ServerRequestContext
from pydantic import BaseModel

from tradeops.agents.tools import TOOLS, TOOLS_BY_NAME, AgentTool, Waiting
from tradeops.audit import recording as audit
from tradeops.auth.principal import Principal
from tradeops.db.notifications import Listener
from tradeops.db.pool import Database
from tradeops.db.uow import UnitOfWork, in_transaction, record_despite_failure
from tradeops.errors import NotFound
from tradeops.problems import ProblemParts, problem_parts
from tradeops.settings import Settings

log = structlog.get_logger(component="tradeops.agents")

INSTRUCTIONS = """\
tradeops is a bank's system of record for trade orders. With these tools you read the clients,
instruments, prices and orders of the desks your API key covers, submit orders, review them
and cancel them. You cannot approve or reject an order: every order waits for a human approver
(maker-checker). Quantities and prices are decimal strings such as "192.55". A failed call
returns an RFC 9457 problem document (type, title, status, detail, errors) as its text: read
`detail`, it says what to change."""


class UnknownTool(NotFound):
    slug = "unknown-tool"
    title = "No such tool"


@dataclass(frozen=True)
class Caller:
    """Who calls a tool, over which transport: the only thing HTTP and stdio do differently."""

    db: Database
    # The transaction's first statement: sets the request context and returns the principal.
    identify: Callable[[UnitOfWork], Awaitable[Principal]]
    transport: Literal["http", "stdio"]
    request_id: str | None
    # The process's order-event notifications, for tools that wait (wait_for_order_update).
    order_events: Listener


CallerOf = Callable[[ServerRequestContext[Any, Any]], Caller]


def _listed(tool: AgentTool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        title=tool.title,
        description=tool.description,
        input_schema=tool.input_schema,
        output_schema=tool.output_schema,
        annotations=types.ToolAnnotations(
            title=tool.title,
            read_only_hint=tool.read_only,
            destructive_hint=tool.destructive,
            idempotent_hint=tool.idempotent,
            open_world_hint=False,
        ),
    )


def build_server(settings: Settings, caller_of: CallerOf) -> Server[Any]:
    listed = [_listed(tool) for tool in TOOLS]

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listed)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await call(settings, caller_of(ctx), params.name, params.arguments or {})

    def input_schema(name: str) -> dict[str, Any] | None:
        tool = TOOLS_BY_NAME.get(name)
        return None if tool is None else tool.input_schema

    return Server(
        "tradeops",
        version=version("tradeops"),
        title="tradeops trade operations",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=input_schema,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


# A waiting call looks again at least this often, should a notification have been lost.
LOOK_AGAIN_SECONDS = 5.0


async def call(
    settings: Settings, caller: Caller, name: str, arguments: dict[str, Any]
) -> types.CallToolResult:
    """Run one tool call; a waiting tool runs again until its order changes or time is up."""
    waiting = _waiting(name, arguments)
    if waiting is None:
        return await call_once(settings, caller, name, arguments)
    # Subscribed before the first look: a change committed after it always wakes the wait.
    # No connection is held while waiting: each look is a transaction of its own, on the
    # primary (caller.db), where the notifying commit happened: a replica could lag behind it.
    with caller.order_events.subscribe(
        lambda notice: notice.get("order_id") == waiting.order_id
    ) as changes:
        deadline = time.monotonic() + waiting.seconds
        result = await call_once(settings, caller, name, arguments)
        while not result.is_error and not waiting.done(result.structured_content or {}):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await changes.wait(min(left, LOOK_AGAIN_SECONDS))
            result = await call_once(settings, caller, name, arguments, audited=False)
        return result


def _waiting(name: str, arguments: dict[str, Any]) -> Waiting | None:
    """How a waiting tool waits; None for other tools, or arguments that are not valid (the
    call then fails on them as any call does)."""
    tool = TOOLS_BY_NAME.get(name)
    if tool is None or tool.waiting is None:
        return None
    try:
        return tool.waiting(tool.arguments.model_validate(arguments))
    except ValueError:
        return None


async def call_once(
    settings: Settings,
    caller: Caller,
    name: str,
    arguments: dict[str, Any],
    *,
    audited: bool = True,
) -> types.CallToolResult:
    """Run one tool call in one transaction and audit it; every failure is a tool error.
    A waiting tool's later looks are not audited again (`audited`): it is one call."""
    tool = TOOLS_BY_NAME.get(name)
    acting: Principal | None = None

    async def command(uow: UnitOfWork) -> BaseModel:
        nonlocal acting
        acting = await caller.identify(uow)
        if tool is None:
            raise UnknownTool(
                f"There is no tool {name}. The tools are: {', '.join(TOOLS_BY_NAME)}. No tool "
                "approves or rejects an order: a human approver decides."
            )
        result = await tool.run(uow, acting, tool.arguments.model_validate(arguments), settings)
        if audited:
            await _record(uow, acting, name, arguments, caller, None)
        return result

    try:
        result = await in_transaction(caller.db, command, attempts=settings.db_retry_attempts)
    except Exception as error:
        problem = problem_parts(error)
        if acting is not None:  # unidentified callers are refused before anything happens
            await _record_failure(caller, acting, name, arguments, problem)
        return _tool_error(problem, name, caller.request_id)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=result.model_dump_json())],
        structured_content=result.model_dump(mode="json"),
    )


def _tool_error(problem: ProblemParts, name: str, request_id: str | None) -> types.CallToolResult:
    document = problem.document(instance=f"/mcp/tools/{name}", request_id=request_id)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=orjson.dumps(document).decode())],
        structured_content=document,
        is_error=True,
    )


async def _record(
    uow: UnitOfWork,
    principal: Principal,
    name: str,
    arguments: dict[str, Any],
    caller: Caller,
    problem: ProblemParts | None,
) -> None:
    """The call's audit event, on the stream of the key that made it (`api_key:<id>`)."""
    outcome: dict[str, Any] = {"outcome": "succeeded"}
    if problem is not None:
        outcome = {
            "outcome": "failed",
            "problem": {"status": problem.status, "slug": problem.slug, "detail": problem.detail},
        }
    entity, entity_id = (
        ("api_key", principal.api_key_id)
        if principal.api_key_id is not None
        else ("user", principal.user_id)
    )
    await audit.record(
        uow,
        principal,
        f"mcp.tool.{name if name in TOOLS_BY_NAME else 'unknown'}",
        entity,
        entity_id,
        after={"tool": name, "transport": caller.transport, "arguments": arguments, **outcome},
    )


async def _record_failure(
    caller: Caller,
    principal: Principal,
    name: str,
    arguments: dict[str, Any],
    problem: ProblemParts,
) -> None:
    async def record(uow: UnitOfWork) -> None:
        await _record(uow, principal, name, arguments, caller, problem)

    try:
        await record_despite_failure(
            caller.db, record, principal=principal, request_id=caller.request_id
        )
    except Exception:  # the caller still gets its problem; operators get the log
        log.exception("could not audit a failed tool call", tool=name)
