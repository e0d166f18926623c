from __future__ import annotations

from fastapi import APIRouter, Query, Request

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, DeclaredQueryOnly, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.problems import problem_responses
from tradeops.risk import service
from tradeops.risk.schemas import RiskLimitIn, RiskLimitList, RiskLimitOut

router = APIRouter(prefix=f"{API_PREFIX}/risk", tags=["risk"], route_class=TransactionalRoute)


@router.get(
    "/limits",
    response_model=RiskLimitList,
    responses=problem_responses(Forbidden, InvalidRequest),
    dependencies=[DeclaredQueryOnly],
)
async def list_limits(
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    desk: str | None = Query(default=None, max_length=64, description="A desk code"),
    client_id: str | None = Query(default=None, max_length=64, description="A client id"),
) -> RiskLimitList:
    """The pre-trade limits per desk and per client (risk and admin), and the default
    fat-finger band. Where a desk and a client limit both apply, the stricter wins."""
    return RiskLimitList(
        items=await service.list_limits(uow, principal, desk=desk, client_id=client_id),
        default_fat_finger_pct=request.app.state.settings.fat_finger_pct,
    )


@router.put(
    "/limits", response_model=RiskLimitOut, responses=problem_responses(InvalidRequest, Forbidden)
)
async def set_limit(data: RiskLimitIn, principal: CurrentPrincipal, uow: UoW) -> RiskLimitOut:
    """Set one desk's or one client's limits (risk only), replacing what was there: a limit
    left out means no limit. Applies to orders checked from now on; audited."""
    return await service.set_limit(uow, principal, data)
