"""Who may do what: the one role-by-action table, and the scopes that narrow an API key.

Services call `authorize(principal, action)` before touching data; PostgreSQL's row-level
security then limits which desks' rows they can see at all.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tradeops.auth.principal import Principal, Role
from tradeops.errors import Forbidden


class Action(StrEnum):
    READ_REFERENCE_DATA = "read reference data"
    MANAGE_INSTRUMENTS = "manage instruments"
    MANAGE_RESTRICTED_LIST = "manage the restricted list"
    READ_CLIENTS = "read clients"
    MANAGE_CLIENTS = "manage clients"
    MANAGE_DESKS = "manage desks"
    MANAGE_USERS = "manage users"
    MANAGE_OWN_API_KEYS = "manage own API keys"
    MANAGE_ANY_API_KEYS = "manage any user's API keys"
    READ_ORDERS = "read orders"
    SUBMIT_ORDER = "submit orders"
    REVIEW_ORDER = "review orders"
    APPROVE_ORDER = "approve orders"
    REJECT_ORDER = "reject orders"
    CANCEL_ORDER = "cancel orders"
    READ_AUDIT = "read the audit trail"
    VERIFY_AUDIT = "verify the audit trail"
    READ_MARKET_DATA = "read market data"
    PUBLISH_MARKET_DATA = "publish market data"
    RECORD_EXECUTION = "record executions"
    READ_POSITIONS = "read positions"
    READ_RISK_LIMITS = "read risk limits"
    MANAGE_RISK_LIMITS = "manage risk limits"
    READ_APPROVAL_POLICIES = "read approval policies"
    MANAGE_APPROVAL_POLICIES = "manage approval policies"
    MANAGE_WEBHOOKS = "manage webhooks"


R = Role
PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.READ_REFERENCE_DATA: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    Action.MANAGE_INSTRUMENTS: frozenset({R.ADMIN}),
    Action.MANAGE_RESTRICTED_LIST: frozenset({R.RISK, R.ADMIN}),
    Action.READ_CLIENTS: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    Action.MANAGE_CLIENTS: frozenset({R.ADMIN}),
    Action.MANAGE_DESKS: frozenset({R.ADMIN}),
    Action.MANAGE_USERS: frozenset({R.ADMIN}),
    Action.MANAGE_OWN_API_KEYS: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    Action.MANAGE_ANY_API_KEYS: frozenset({R.ADMIN}),
    Action.READ_ORDERS: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    Action.SUBMIT_ORDER: frozenset({R.TRADER, R.AGENT}),
    Action.REVIEW_ORDER: frozenset({R.TRADER, R.AGENT, R.APPROVER}),
    Action.APPROVE_ORDER: frozenset({R.APPROVER}),
    Action.REJECT_ORDER: frozenset({R.APPROVER}),
    Action.CANCEL_ORDER: frozenset({R.TRADER, R.AGENT, R.APPROVER}),
    Action.READ_AUDIT: frozenset({R.RISK, R.ADMIN}),
    Action.VERIFY_AUDIT: frozenset({R.RISK, R.ADMIN}),
    Action.READ_MARKET_DATA: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    # Prices feed the bank's books: published by operations (admin, or an admin's feed key)
    # and by the system itself. Row-level security allows the same roles to insert.
    Action.PUBLISH_MARKET_DATA: frozenset({R.ADMIN}),
    # Fills come from venues and the OMS: recorded by operations (admin, or an admin's
    # connector key) and by the system (simulate-fills). Row-level security allows the same.
    Action.RECORD_EXECUTION: frozenset({R.ADMIN}),
    Action.READ_POSITIONS: frozenset({R.TRADER, R.AGENT, R.APPROVER, R.RISK, R.ADMIN}),
    # Limits are the risk function's; admin may look (no key may do either).
    Action.READ_RISK_LIMITS: frozenset({R.RISK, R.ADMIN}),
    Action.MANAGE_RISK_LIMITS: frozenset({R.RISK}),
    # How many people approve a desk's orders: risk and admin set and read it (no key does).
    Action.READ_APPROVAL_POLICIES: frozenset({R.RISK, R.ADMIN}),
    Action.MANAGE_APPROVAL_POLICIES: frozenset({R.RISK, R.ADMIN}),
    # Where order events are sent, and what was sent: admins, signed in (no key has a scope).
    Action.MANAGE_WEBHOOKS: frozenset({R.ADMIN}),
}

# The scope an API key needs for each action; actions without a scope are never open to keys.
SCOPES: dict[Action, str] = {
    Action.READ_REFERENCE_DATA: "reference:read",
    Action.READ_CLIENTS: "clients:read",
    Action.READ_ORDERS: "orders:read",
    Action.SUBMIT_ORDER: "orders:write",
    Action.CANCEL_ORDER: "orders:write",
    Action.REVIEW_ORDER: "orders:review",
    Action.READ_AUDIT: "audit:read",
    Action.READ_MARKET_DATA: "marketdata:read",
    Action.PUBLISH_MARKET_DATA: "marketdata:write",
    Action.RECORD_EXECUTION: "executions:write",
    Action.READ_POSITIONS: "positions:read",
}
KNOWN_SCOPES = frozenset(SCOPES.values())


def usable_scopes(role: Role) -> frozenset[str]:
    """The scopes a key of an owner with this role can ever use: those of the actions the
    role may take (a key only narrows its owner)."""
    return frozenset(scope for action, scope in SCOPES.items() if role in PERMISSIONS[action])


# Deciding on an order is a person's act: no key may do it, whoever owns the key.
PERSON_ONLY = frozenset({Action.APPROVE_ORDER, Action.REJECT_ORDER})
# What every key may do whatever its scopes (their scopes exist, so asking for them is valid).
OPEN_TO_ANY_KEY = frozenset({Action.READ_REFERENCE_DATA, Action.READ_MARKET_DATA})


def is_allowed(principal: Principal, action: Action) -> bool:
    if principal.role is Role.SYSTEM:
        return action not in PERSON_ONLY
    if principal.role not in PERMISSIONS[action]:
        return False
    if principal.scopes is None:
        return True
    if action in PERSON_ONLY:
        return False
    scope = SCOPES.get(action)
    # Reading reference data (instruments, desks) and prices comes with any key.
    return action in OPEN_TO_ANY_KEY or (scope is not None and scope in principal.scopes)


def who_may(action: Action) -> dict[str, Any]:
    """is_allowed's rule for `action`, as a statement that authenticates and then writes
    checks it before writing (orders.repository.SUBMIT_IN_ONE_STATEMENT): the roles that may
    (`roles`) and the scope a key needs (`scope`). For an action a key may take under its
    scope: not a person's only act, nor one open to any key."""
    if action in PERSON_ONLY or action in OPEN_TO_ANY_KEY or action not in SCOPES:
        raise ValueError(f"{action.value}: not decided by role and key scope alone")
    return {"roles": sorted(role.value for role in PERMISSIONS[action]), "scope": SCOPES[action]}


def who_may_all(*actions: Action) -> dict[str, Any]:
    """is_allowed's rule for taking every one of `actions`, as a statement that authenticates
    and then writes checks it (orders.repository.DECIDE_IN_ONE_STATEMENT): the roles that may
    take them all (`roles`), and the scopes a key needs for them (`scopes`; None when one of
    them is a person's only act, which no key may take)."""
    roles = frozenset.intersection(*(PERMISSIONS[action] for action in actions))
    scopes = None
    if not any(action in PERSON_ONLY for action in actions):
        scopes = [SCOPES[action] for action in actions if action not in OPEN_TO_ANY_KEY]
    return {"roles": sorted(role.value for role in roles), "scopes": scopes}


def missing_scope(principal: Principal, action: Action) -> str | None:
    """The scope a key lacks for an action its owner's role allows (None: not a scope matter)."""
    if principal.scopes is None or action in PERSON_ONLY or action in OPEN_TO_ANY_KEY:
        return None
    if principal.role not in PERMISSIONS[action]:
        return None
    scope = SCOPES.get(action)
    return scope if scope is not None and scope not in principal.scopes else None


def authorize(principal: Principal, action: Action) -> None:
    if is_allowed(principal, action):
        return
    scope = missing_scope(principal, action)
    if scope is not None:
        # Name the scope, so the key's owner (or an agent reading the problem) knows the fix.
        raise Forbidden(
            f"Your key lacks the scope {scope}, needed to {action.value}.",
            action=action.value,
            missing_scope=scope,
        )
    raise Forbidden(f"Your role or key may not {action.value}.", action=action.value)
