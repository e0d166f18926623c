"""Every model, imported once so Alembic and the tests see the whole schema."""

from tradeops.auth.models import ApiKey, User
from tradeops.clients.models import Client
from tradeops.db.base import Base
from tradeops.desks.models import Desk, DeskMember
from tradeops.instruments.models import Instrument
from tradeops.orders.models import Order, OrderEvent

__all__ = [
    "ApiKey",
    "Base",
    "Client",
    "Desk",
    "DeskMember",
    "Instrument",
    "Order",
    "OrderEvent",
    "User",
]
