"""schemathesis over the whole OpenAPI of a live server: 0 server errors.

Two runs, one per way in (a person's JWT, an agent's API key), each of every phase (the
schema's examples, coverage, fuzzing, and the stateful phase that follows the OpenAPI links
submit → get → review → approve), within a fixed time budget. Only `not_a_server_error` is
checked: no input, however wrong, may get a 5xx (there is no deliberate fault here, so not
even a 503).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.faults.conftest import FIGURES_DIR, ROOT, Stack

pytestmark = pytest.mark.faults

SECONDS_PER_RUN = int(os.environ.get("TRADEOPS_FUZZ_SECONDS", "90"))
MAX_EXAMPLES = int(os.environ.get("TRADEOPS_FUZZ_EXAMPLES", "50"))


@pytest.mark.parametrize("auth", ["jwt", "agent"])
def test_no_input_gets_a_server_error(stack: Stack, auth: str) -> None:
    report_dir = stack.workdir / f"schemathesis-{auth}"
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis),
        "run",
        f"{stack.base_url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(MAX_EXAMPLES),
        "--max-time", str(SECONDS_PER_RUN),
        "--workers", "1",  # hypothesis describes filters with ast.parse, not thread-safe on 3.11
        "--request-timeout", "20",
        "--suppress-health-check", "all",
        "--seed", "20261127",
        "--report", "junit",
        "--report-dir", str(report_dir),
        "--output-truncate", "true",
        # A stream never ends: fuzzing it would wait out the request timeout on every case
        # (its inputs are checked in tests/integration/test_order_event_stream.py).
        "--exclude-path", "/api/v1/orders/events/stream",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SCHEMATHESIS_HOOKS": "tests.faults.schemathesis_hooks",
        "TRADEOPS_FUZZ_AUTH": auth,
        "TRADEOPS_FUZZ_TRADER": stack.trader,
        "TRADEOPS_FUZZ_APPROVER": stack.approver,
        "TRADEOPS_FUZZ_AGENT_KEY": stack.agent_key,
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_RUN * 3 + 120,
    )
    print(f"\n=== schemathesis ({auth}): exit {done.returncode} ===\n{done.stdout[-12000:]}")
    if done.stderr:
        print(done.stderr[-3000:])
    figures = figures_of(auth, done.stdout, report_dir)
    print(f"=== schemathesis figures ({auth}) ===\n{json.dumps(figures, indent=2)}")
    assert figures["operations_with_server_error"] == 0, f"server errors ({auth}); see above"
    assert done.returncode == 0, f"schemathesis ({auth}) did not finish cleanly; see above"


def figures_of(auth: str, output: str, report_dir: Path) -> dict[str, object]:
    """Test cases sent and operations with a server error (from the JUnit report), written to
    .tradeops/faults/schemathesis-<auth>.json for the README."""
    failed = errored = 0
    for report in report_dir.glob("*.xml"):
        suites = ET.parse(report).getroot()
        failed += int(suites.get("failures", "0"))
        errored += int(suites.get("errors", "0"))
    generated = re.search(r"(\d+) generated", output)
    figures: dict[str, object] = {
        "auth": auth,
        "test_cases": int(generated.group(1)) if generated else None,
        "operations_with_server_error": failed,
        "runtime_errors": errored,
        "budget_seconds": SECONDS_PER_RUN,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    (FIGURES_DIR / f"schemathesis-{auth}.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures
