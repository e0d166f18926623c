from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from tradeops.db.http import TransactionalRoute
from tradeops.deps import API_PREFIX, CurrentPrincipal, DeclaredQueryOnly, RowId, UoW
from tradeops.errors import Forbidden, InvalidRequest
from tradeops.problems import problem_responses
from tradeops.webhooks import service
from tradeops.webhooks.schemas import (
    DeliveryPage,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
)

router = APIRouter(
    prefix=f"{API_PREFIX}/webhooks", tags=["webhooks"], route_class=TransactionalRoute
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses=problem_responses(InvalidRequest, Forbidden),
)
async def create_webhook(
    data: WebhookIn, request: Request, principal: CurrentPrincipal, uow: UoW
) -> WebhookCreated:
    """Send signed notifications of order events on these desks to a URL (admin, signed in).

    The answer carries the endpoint's signing `secret` (`whsec_…`), shown this once: keep it
    where the receiver verifies `webhook-signature` (Standard Webhooks). Event types:
    `order.awaiting_approval`, `order.approved`, `order.rejected`, `order.expired`,
    `order.filled`, `order.risk_failed`. Audited as `webhook.created` (without the secret).
    """
    allow_http = request.app.state.settings.webhooks_may_use_http
    return await service.create_webhook(uow, principal, data, allow_http=allow_http)


@router.get("", response_model=WebhookList, responses=problem_responses(Forbidden))
async def list_webhooks(principal: CurrentPrincipal, uow: UoW) -> WebhookList:
    """The active endpoints (admin); secrets are never shown again."""
    return WebhookList(items=await service.list_webhooks(uow, principal))


@router.get(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=problem_responses(Forbidden, service.WebhookNotFound),
)
async def get_webhook(webhook_id: RowId, principal: CurrentPrincipal, uow: UoW) -> WebhookOut:
    """One endpoint, deleted or not (admin)."""
    return await service.get_webhook(uow, principal, webhook_id)


@router.delete(
    "/{webhook_id}",
    response_model=WebhookOut,
    responses=problem_responses(Forbidden, service.WebhookNotFound),
)
async def delete_webhook(webhook_id: RowId, principal: CurrentPrincipal, uow: UoW) -> WebhookOut:
    """Stop sending to an endpoint (admin): what it was still owed is cancelled; its
    deliveries stay readable. Audited as `webhook.deleted`."""
    return await service.delete_webhook(uow, principal, webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    responses=problem_responses(InvalidRequest, Forbidden, service.WebhookNotFound),
    dependencies=[DeclaredQueryOnly],
)
async def list_deliveries(
    webhook_id: RowId,
    request: Request,
    principal: CurrentPrincipal,
    uow: UoW,
    after: str | None = Query(default=None, description="next_cursor of the previous page"),
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
) -> DeliveryPage:
    """What was sent to an endpoint, newest first (admin): each delivery's `webhook_id`
    (the same on every attempt), `status` (`pending`, `delivered`, `failed` after the last
    attempt, `cancelled` by a delete) and every attempt with the receiver's status code or
    the error, and how long it took."""
    settings = request.app.state.settings
    return await service.list_deliveries(
        uow, principal, webhook_id, limit=limit or settings.page_size_default, after=after
    )
