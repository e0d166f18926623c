"""schemathesis hooks for the fuzzing of the whole OpenAPI (loaded with SCHEMATHESIS_HOOKS).

Every request carries the credential of the run's mode: TRADEOPS_FUZZ_AUTH=jwt signs the
trader in for everything but approve and reject, which an approver's JWT signs (a maker may
never approve, so the stateful chain submit → get → review → approve needs two people);
TRADEOPS_FUZZ_AUTH=agent sends the agent's API key everywhere (approve then answers 403).
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

DECIDING = ("/approve", "/reject")


def credential(path: str) -> str:
    if os.environ["TRADEOPS_FUZZ_AUTH"] == "agent":
        return os.environ["TRADEOPS_FUZZ_AGENT_KEY"]
    if path.endswith(DECIDING):
        return os.environ["TRADEOPS_FUZZ_APPROVER"]
    return os.environ["TRADEOPS_FUZZ_TRADER"]


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = dict(case.headers or {})
    headers["Authorization"] = f"Bearer {credential(case.operation.path)}"
    case.headers = headers
