"""`make help` lists every target of the Makefile, from the `## what it does` after each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"
# A rule a person runs: `name: prerequisites`, not a variable (`NAME := value`) and not a file
# target such as .venv/.synced or $(CURDIR)/.tools/bin/uv.
TARGET = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\s*:(?!=)", re.MULTILINE)


def targets() -> set[str]:
    return set(TARGET.findall(MAKEFILE.read_text()))


def phony() -> set[str]:
    match = re.search(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, "the Makefile declares its .PHONY targets"
    return set(match.group(1).split())


def make_help() -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_make_help_lists_every_target_with_what_it_does() -> None:
    listed = dict(re.findall(r"^make (\S+)\s+(.+)$", make_help(), re.MULTILINE))
    assert targets() - listed.keys() == set(), "a target without a `## ...` comment"
    assert {"run", "test", "lint", "bench", "clean", "reset", "help"} <= listed.keys()
    assert all(listed.values())


def test_every_target_is_phony_and_every_phony_target_exists() -> None:
    assert targets() == phony()


def test_make_clean_says_how_to_reset_the_embedded_database() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRADEOPS_HOME"}
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "clean"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "make reset (or rm -rf .tradeops)" in dry
    assert ".tradeops" not in dry.split("rm -rf", 2)[1].splitlines()[0], "clean keeps it"
