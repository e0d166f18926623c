"""Options shared by the Alembic environment and the drift test."""

from __future__ import annotations


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # procrastinate owns its tables; our migrations apply its schema but do not model it.
    return not (type_ == "table" and name is not None and name.startswith("procrastinate"))
