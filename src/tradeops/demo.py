"""Demo data: desks, clients, instruments, their prices and users. Loading it twice changes
nothing."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path

from pydantic import SecretStr

from tradeops.auth import users
from tradeops.auth.principal import Principal
from tradeops.auth.users import UserCreate
from tradeops.clients import service as clients
from tradeops.clients.schemas import ClientCreate
from tradeops.db.uow import UnitOfWork
from tradeops.desks import service as desks
from tradeops.desks.service import ApprovalBand, ApprovalPolicyIn, DeskIn
from tradeops.errors import Conflict
from tradeops.instruments import service as instruments
from tradeops.instruments.schemas import InstrumentCreate
from tradeops.marketdata import service as marketdata
from tradeops.marketdata.schemas import SnapshotBatch, SnapshotIn
from tradeops.risk import service as risk
from tradeops.risk.schemas import RiskLimitIn

DESKS = [
    # Their end of day: DAY orders still open then expire (tradeops.orders.expiry).
    DeskIn(code="EQ-US", name="US Equities", time_zone="America/New_York", day_cutoff=time(16)),
    DeskIn(
        code="FI-EU",
        name="European Fixed Income",
        time_zone="Europe/Berlin",
        day_cutoff=time(17, 30),
    ),
]
CLIENTS = [
    ClientCreate(client_id="CUST-1001", name="Hudson Pension Fund", desk="EQ-US"),
    ClientCreate(client_id="CUST-1002", name="Bluewater Capital", desk="EQ-US"),
    ClientCreate(client_id="CUST-2001", name="Rheinland Versicherung", desk="FI-EU"),
]
_CENT = Decimal("0.01")
INSTRUMENTS = [
    InstrumentCreate(
        symbol=s,
        name=n,
        asset_class=a,
        currency="USD",
        lot_size=Decimal(1),
        tick_size=_CENT,
        restricted=r,
    )
    for s, n, a, r in [
        ("AAPL", "Apple Inc.", "EQUITY", False),
        ("MSFT", "Microsoft Corp.", "EQUITY", False),
        ("NVDA", "NVIDIA Corp.", "EQUITY", False),
        ("JPM", "JPMorgan Chase & Co.", "EQUITY", False),
        ("SPY", "SPDR S&P 500 ETF Trust", "ETF", False),
        # On the restricted list (say, the bank advises on a pending deal): orders fail risk.
        ("ACME", "Acme Holdings Inc.", "EQUITY", True),
    ]
] + [
    InstrumentCreate(
        symbol="DBR-2034",
        name="Bund 2.6% 15/08/2034",
        asset_class="BOND",
        currency="EUR",
        lot_size=Decimal(1000),
        tick_size=Decimal("0.001"),
    ),
]

# One price per instrument, at a fixed moment, so reloading finds them already there.
DEMO_PRICES_AS_OF = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
PRICES = SnapshotBatch(
    snapshots=[
        SnapshotIn(symbol=symbol, price=Decimal(price), as_of=DEMO_PRICES_AS_OF, source="demo")
        for symbol, price in [
            ("AAPL", "192.55"),
            ("MSFT", "415.20"),
            ("NVDA", "121.40"),
            ("JPM", "201.10"),
            ("SPY", "560.30"),
            ("ACME", "18.75"),
            ("DBR-2034", "101.250"),
        ]
    ]
)


# Desk limits for the pre-trade check, set only where a desk has none (so reloading never
# undoes what a risk officer changed).
LIMITS = [
    RiskLimitIn(desk="EQ-US", max_order_notional=Decimal(5_000_000), max_position=Decimal(100_000)),
    RiskLimitIn(desk="FI-EU", max_order_notional=Decimal(20_000_000), fat_finger_pct=Decimal(5)),
]


async def _missing_limit(uow: UnitOfWork, principal: Principal, limit: RiskLimitIn) -> int:
    listed = await risk.list_limits(uow, principal, desk=limit.desk)
    if any(item.client_id is None for item in listed):
        return 0
    await risk.set_limit(uow, principal, limit)
    return 1


# Approval policies, set only where a desk has none: EQ-US orders above 1,000,000 USD need
# two approvers (approver@ and approver2@demo.test).
APPROVAL_POLICIES = {
    "EQ-US": ApprovalPolicyIn(
        currency="USD",
        bands=[
            ApprovalBand(min_notional=Decimal(0), approvals=1),
            ApprovalBand(min_notional=Decimal(1_000_000), approvals=2),
        ],
    )
}


async def _missing_policy(
    uow: UnitOfWork, principal: Principal, desk: str, policy: ApprovalPolicyIn
) -> int:
    if (await desks.get_approval_policy(uow, principal, desk)).updated_at is not None:
        return 0
    await desks.set_approval_policy(uow, principal, desk, policy)
    return 1


async def load_demo_data(uow: UnitOfWork, principal: Principal) -> dict[str, int]:
    """Create whatever of the demo data is missing; return how many of each kind were added."""
    added = {
        "desks": 0,
        "clients": 0,
        "instruments": 0,
        "prices": 0,
        "risk_limits": 0,
        "approval_policies": 0,
    }
    for desk in DESKS:
        added["desks"] += await _created(desks.create_desk(uow, principal, desk))
    for client in CLIENTS:
        added["clients"] += await _created(clients.create_client(uow, principal, client))
    for instrument in INSTRUMENTS:
        added["instruments"] += await _created(
            instruments.create_instrument(uow, principal, instrument)
        )
    added["prices"] = (await marketdata.publish(uow, principal, PRICES)).stored
    for limit in LIMITS:
        added["risk_limits"] += await _missing_limit(uow, principal, limit)
    for desk_code, policy in APPROVAL_POLICIES.items():
        added["approval_policies"] += await _missing_policy(uow, principal, desk_code, policy)
    return added


async def _created(creation: object) -> int:
    try:
        await creation  # type: ignore[misc]
    except Conflict:
        return 0
    return 1


DEMO_USERS = [
    ("trader@demo.test", "Tess Trader", "trader", ["EQ-US"]),
    ("trader.fi@demo.test", "Felix Fixed-Income", "trader", ["FI-EU"]),
    ("approver@demo.test", "Ada Approver", "approver", ["EQ-US"]),
    ("approver2@demo.test", "Bo Second-Approver", "approver", ["EQ-US"]),
    ("risk@demo.test", "Rita Risk", "risk", []),
    ("admin@demo.test", "Otto Operations", "admin", []),
]
# The agent's account signs in only with API keys (`tradeops api-keys create`).
DEMO_AGENT = ("agent@demo.test", "Research Agent", "agent", ["EQ-US"])


async def load_demo_users(
    uow: UnitOfWork, principal: Principal, password: str | None, *, reset_existing: bool = False
) -> list[str]:
    """Create the missing demo users; return the emails of those created.

    The people get `password` (each a random one when it is None); the agent signs in only
    with API keys. With `reset_existing`, people already there get `password` too, so the
    demo password on record is the one that works.
    """
    created: list[str] = []
    for email, name, role, desk_codes in [*DEMO_USERS, DEMO_AGENT]:
        secret = None if role == "agent" else (password or secrets.token_urlsafe(12))
        data = UserCreate(
            email=email,
            name=name,
            role=role,
            desks=desk_codes,
            password=SecretStr(secret) if secret else None,
        )
        if await _created(users.create_user(uow, principal, data)):
            created.append(email)
        elif secret and reset_existing:
            await users.set_password(uow, principal, email, secret)
    return created


def describe_added(added: dict[str, int]) -> str:
    """The demo data summary in words: 'added 2 desks, 3 clients, ...' or 'nothing new'."""
    parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in added.items() if count]
    if not parts:
        return "demo data already loaded, nothing new added"
    return "demo data: added " + ", ".join(parts)


# The demo password is chosen once per TRADEOPS_HOME and kept there, readable by its owner
# only, so `tradeops demo logins` can show it again after the first run's output is gone.
DEMO_PASSWORD_FILE = "demo-password"


def stored_demo_password(home: Path) -> str | None:
    path = home / DEMO_PASSWORD_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def store_demo_password(home: Path, password: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    path = home / DEMO_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    path.chmod(0o600)  # an older file may have been made with wider rights


def new_demo_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters of [A-Za-z0-9_-]: safe in a shell


def demo_people() -> list[tuple[str, str, list[str]]]:
    """(email, role, desks) of the demo users who sign in with a password."""
    return [(email, role, desk_codes) for email, _, role, desk_codes in DEMO_USERS]
