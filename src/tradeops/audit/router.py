from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from tradeops.audit import service, verification
from tradeops.audit.repository import AuditFilters
from tradeops.audit.service import AuditPage
from tradeops.audit.verification import VerificationReport
from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, DeclaredQueryOnly, PrincipalOnly, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.pagination import decode_id_cursor
from tradeops.problems import problem_responses

router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"], route_class=TransactionalRoute)


class CheckpointOut(BaseModel):
    created: bool
    upto_id: int | None = None
    events: int | None = None
    root_hash: str | None = None


@router.get(
    "/events",
    response_model=AuditPage,
    responses=problem_responses(Forbidden, InvalidRequest),
    dependencies=[DeclaredQueryOnly],
)
async def list_audit_events(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    entity: str | None = Query(default=None, description="order, user, api_key, client, …"),
    entity_id: str | None = None,
    action: str | None = Query(default=None, description="e.g. order.approved, login.failed"),
    actor: str | None = Query(default=None, description='e.g. "user:7" or "user:7/key:3"'),
    desk: str | None = Query(default=None, description="desk code, e.g. EQ-US"),
    at_from: datetime | None = None,
    at_to: datetime | None = None,
    after: str | None = Query(default=None, description="next_cursor of the previous page"),
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """The audit trail, oldest first (risk and admin): every state change with its actor
    (and API key, and the acting person's email), the desk it concerns, request id, before and
    after. A key narrowed to some desks sees those desks' events and the desk-less ones (users,
    keys, instruments, …); decimals in new payloads are strings, as elsewhere in the API."""
    wanted = AuditFilters(entity, entity_id, action, actor, desk, at_from, at_to)
    return await service.list_events(
        uow, principal, wanted, limit=limit, after=decode_id_cursor(after)
    )


# Not a TransactionalRoute: verification reads in short transactions of its own (verification.py)
# and may take a while; the request holds no connection meanwhile.
verify_router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"])


@verify_router.post(
    "/verify", response_model=VerificationReport, responses=problem_responses(Forbidden)
)
async def verify_audit_trail(
    request: Request,
    principal: PrincipalOnly,
    full: Annotated[
        bool,
        Query(
            description="Hash every event from the first, not only those after the newest"
            " signed checkpoint (whose signature is checked either way)"
        ),
    ] = False,
) -> VerificationReport:
    """Recompute the hash and chain link of every event after the newest signed checkpoint
    (with `full=true`, of every event, and every checkpoint's root), check the checkpoint
    signatures and every stream's head (risk and admin, over every desk: never a key limited
    to some desks). `ok` is true, or `first_broken` names the first event that does not hold.
    Events are read in batches of TRADEOPS_AUDIT_VERIFY_BATCH; a full check of a million events
    takes about a minute."""
    settings = request.app.state.settings
    return await verification.verify(
        request.app.state.db,
        principal,
        settings.audit_key.get_secret_value().encode(),
        full=full,
        batch=settings.audit_verify_batch,
    )


@router.post("/checkpoints", response_model=CheckpointOut, responses=problem_responses(Forbidden))
async def create_checkpoint(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    settle_seconds: Annotated[float, Query(ge=0, le=3600)] = 300,
) -> CheckpointOut:
    """Sign the trail up to its newest event older than `settle_seconds` (risk and admin).
    The server also does this by itself every TRADEOPS_AUDIT_CHECKPOINT_SECONDS."""
    key = request.app.state.settings.audit_key.get_secret_value().encode()
    made = await service.create_checkpoint(uow, principal, key, settle_seconds=settle_seconds)
    if made is None:
        return CheckpointOut(created=False)
    return CheckpointOut(
        created=True, upto_id=made.upto_id, events=made.events, root_hash=made.root_hash
    )
