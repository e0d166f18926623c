"""The one way into audit_events: every writer's audit row is built here.

In a request context the database fills actor, api_key_id and request_id from it
(migration 0011), so the actor's format ("user:7", "user:7/key:3") is written once, in SQL;
a writer without one (a sign-in, before anyone is known) or acting as someone else (the
risk job's "system:risk-check") names them.
"""

from __future__ import annotations

from tradeops.db.prepared import prepare

_COLUMNS = "stream, action, entity, entity_id, before, after"
_NAMED = ", actor, api_key_id, request_id"


def append_audit(
    *,
    entity: str,
    entity_id: str,
    after: str,
    before: str = "NULL",
    action: str = ":action",
    source: str = "",
    named: str = "",
) -> str:
    """An INSERT of audit events, one per row of `source` (a FROM clause; none: one event).

    Each argument is an SQL expression from this code, never from input (hence the noqa):
    `entity` the kind ("'order'"), `entity_id` its key as text, `before` and `after` its
    jsonb states. `named` gives the actor, key and request where the context does not, as
    three expressions ("CAST(:actor AS text), NULL, :request_id")."""
    columns = _COLUMNS + (_NAMED if named else "")
    stream = f"{entity} || ':' || {entity_id}"
    values = f"{stream}, {action}, {entity}, {entity_id}, {before}, {after}"
    values += f", {named}" if named else ""
    return f"INSERT INTO audit_events ({columns}) SELECT {values}" + (  # noqa: S608
        f" FROM {source}" if source else ""
    )


# One event from parameters, in the context's name, or in a named actor's (sign-in).
_EVENT = {
    "entity": "CAST(:entity AS text)",
    "entity_id": "CAST(:entity_id AS text)",
    "before": "CAST(:before AS jsonb)",
    "after": "CAST(:after AS jsonb)",
}
RECORD = prepare(append_audit(**_EVENT))
RECORD_AS = prepare(
    append_audit(**_EVENT, named="CAST(:actor AS text), CAST(:api_key_id AS bigint), :request_id")
)
