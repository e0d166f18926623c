"""Every model, imported once so Alembic and the tests see the whole schema.

Here, beside the migrations, not in db/: the database layer sits below the domains that
define the tables, so it must not import them."""

from tradeops.audit.models import AuditCheckpoint, AuditEvent, AuditStreamHead
from tradeops.auth.models import ApiKey, User
from tradeops.clients.models import Client
from tradeops.db.base import Base
from tradeops.desks.models import ApprovalBand, Desk, DeskApprovalPolicy, DeskMember
from tradeops.executions.models import Execution
from tradeops.idempotency.models import IdempotencyKey
from tradeops.instruments.models import Instrument
from tradeops.marketdata.models import MarketSnapshot
from tradeops.orders.models import Order, OrderApproval, OrderEvent
from tradeops.positions.models import Position
from tradeops.risk.models import RiskLimit
from tradeops.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "ApiKey",
    "ApprovalBand",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditStreamHead",
    "Base",
    "Client",
    "Desk",
    "DeskApprovalPolicy",
    "DeskMember",
    "Execution",
    "IdempotencyKey",
    "Instrument",
    "MarketSnapshot",
    "Order",
    "OrderApproval",
    "OrderEvent",
    "Position",
    "RiskLimit",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
