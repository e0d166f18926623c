"""How far apart a failed webhook delivery's attempts are: `retry_in_seconds` after the n-th
failure is base x 2^(n-1) ±25 % (jitter, so that the deliveries of a receiver that was down do
not all come back in the same instant), never more than an hour (docs/api.md, docs/operations.md:
"at most an hour apart"). The fault suite checks the recorded attempts of a real outage keep
these gaps (tests/faults/test_webhooks_outlive_a_receiver_outage.py)."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from tradeops.settings import Settings
from tradeops.webhooks.service import MAX_BACKOFF_SECONDS, retry_in_seconds

SAMPLES = 2000
DEFAULTS = Settings(env="test", _env_file=None)  # type: ignore[call-arg]


def delays(settings: Settings, attempt: int) -> list[float]:
    return [retry_in_seconds(settings, attempt) for _ in range(SAMPLES)]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(20261127)  # the jitter's draws, the same on every run


def test_the_default_backoff_starts_at_five_seconds_and_keeps_trying_for_hours() -> None:
    assert DEFAULTS.webhook_backoff_seconds == 5.0
    assert DEFAULTS.webhook_max_attempts == 15
    # The waits between the 15 attempts, without jitter: a receiver down for a minute is
    # tried again long after it is back (the last attempts come an hour apart).
    attempts = DEFAULTS.webhook_max_attempts
    waits = [min(MAX_BACKOFF_SECONDS, 5.0 * 2 ** (n - 1)) for n in range(1, attempts)]
    assert sum(waits[:4]) == 75.0  # attempt 5 is the first that a one-minute outage spares
    assert 5 * 3600 < sum(waits) < 6 * 3600


@pytest.mark.parametrize("attempt", range(1, DEFAULTS.webhook_max_attempts + 1))
def test_the_delay_after_a_failure_is_the_doubled_base_within_a_quarter(attempt: int) -> None:
    expected = DEFAULTS.webhook_backoff_seconds * 2 ** (attempt - 1)
    drawn = delays(DEFAULTS, attempt)
    assert min(drawn) >= 0.75 * min(expected, MAX_BACKOFF_SECONDS)
    assert max(drawn) <= min(1.25 * expected, MAX_BACKOFF_SECONDS)
    if 1.25 * expected <= MAX_BACKOFF_SECONDS:  # below the cap the jitter is the whole ±25 %
        assert min(drawn) < 0.77 * expected and max(drawn) > 1.23 * expected
        assert statistics.median(drawn) == pytest.approx(expected, rel=0.03)


def test_no_delay_is_ever_above_an_hour() -> None:
    """Past the cap (5 s x 2^10 > 1 h) the jitter only ever shortens the wait: every delay is
    at most an hour, and they still spread (not all on the hour)."""
    for attempt in (11, 12, 15, 40, 100, 10_000):
        drawn = delays(DEFAULTS, attempt)
        assert max(drawn) <= MAX_BACKOFF_SECONDS
        assert min(drawn) >= 0.75 * MAX_BACKOFF_SECONDS
        assert len({round(d) for d in drawn if d < MAX_BACKOFF_SECONDS}) > 100


def test_the_delays_grow_exponentially() -> None:
    """Each median doubles the one before (±5 %, the medians of 2000 jittered draws), whatever
    the base: the fault suite's 5 s, the integration tests' 0.2 s, a slower 30 s."""
    for base in (5.0, 0.2, 30.0):
        settings = DEFAULTS.model_copy(update={"webhook_backoff_seconds": base})
        medians = [statistics.median(delays(settings, n)) for n in range(1, 8)]
        ratios = [later / earlier for earlier, later in itertools.pairwise(medians)]
        assert ratios == pytest.approx([2.0] * len(ratios), rel=0.05), (base, medians)
