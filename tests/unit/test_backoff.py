"""The retry schedule of notification deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from watcher.notify import backoff
from watcher.notify.backoff import LADDER, STEADY, WINDOW, delay_after, next_attempt

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run_until_dead(start: datetime, created_at: datetime) -> list[datetime]:
    """Attempt times of a delivery that fails every time it is tried, on time."""
    times: list[datetime] = []
    at: datetime | None = start
    failures = 0
    while at is not None:
        times.append(at)
        failures += 1
        at = next_attempt(failures=failures, failed_at=at, created_at=created_at)
        assert failures < 100, "the schedule never ends"
    return times


def test_ladder_is_ten_seconds_then_minutes_then_hours() -> None:
    """The delays after the first six failures are 10 s, 1 min, 5 min, 30 min, 2 h and 6 h."""
    assert [delay_after(n) for n in range(1, 7)] == [
        timedelta(seconds=10),
        timedelta(minutes=1),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=6),
    ]


def test_after_the_ladder_every_twelve_hours() -> None:
    """From the seventh failure on, a delivery is retried every 12 hours."""
    assert delay_after(7) == delay_after(12) == delay_after(50) == timedelta(hours=12)


def test_failure_count_starts_at_one() -> None:
    """Asking for the delay after zero failures is a programming error, named in the message."""
    with pytest.raises(ValueError, match="failures must be >= 1, got 0"):
        delay_after(0)


def test_first_retry_comes_ten_seconds_after_the_first_failure() -> None:
    """A fresh event that fails at once is retried 10 seconds later."""
    assert next_attempt(failures=1, failed_at=T0, created_at=T0) == T0 + timedelta(seconds=10)


def test_always_failing_delivery_is_dead_three_days_after_the_event() -> None:
    """Retries follow the ladder, then 12 h steps; the last is at exactly 3 days, then dead."""
    times = run_until_dead(T0, T0)
    gaps = [b - a for a, b in pairwise(times)]
    assert gaps[: len(LADDER)] == list(LADDER)
    assert all(g == STEADY for g in gaps[len(LADDER) : -1])
    assert gaps[-1] <= STEADY
    assert times[-1] == T0 + WINDOW
    assert len(times) == 13


def test_last_retry_is_moved_to_the_deadline() -> None:
    """A retry that would fall after the 3-day window is moved to its end, not skipped."""
    failed_at = T0 + WINDOW - timedelta(hours=1)
    assert next_attempt(failures=9, failed_at=failed_at, created_at=T0) == T0 + WINDOW


def test_failure_after_the_window_is_final() -> None:
    """Once the ladder is climbed, a failure at or after 3 days since the event means dead."""
    assert next_attempt(failures=7, failed_at=T0 + WINDOW, created_at=T0) is None


def test_late_delivery_still_climbs_the_short_ladder() -> None:
    """A delivery first tried after the window (daemon down, operator retry) gets six retries."""
    late = T0 + timedelta(days=5)
    times = run_until_dead(late, T0)
    assert len(times) == len(LADDER) + 1
    assert times[-1] - late == sum(LADDER, timedelta())


def test_jitter_stretches_the_delay_by_at_most_ten_percent() -> None:
    """The injected random number scales the delay between 100 % and 110 %."""
    low = next_attempt(failures=4, failed_at=T0, created_at=T0, rand=lambda: 0.0)
    high = next_attempt(failures=4, failed_at=T0, created_at=T0, rand=lambda: 0.999999)
    assert low == T0 + timedelta(minutes=30)
    assert high is not None
    assert T0 + timedelta(minutes=30) < high < T0 + timedelta(minutes=33)


def test_out_of_range_random_numbers_are_clamped() -> None:
    """A broken random source can never shorten a delay or stretch it past the jitter bound."""
    below = next_attempt(failures=2, failed_at=T0, created_at=T0, rand=lambda: -5.0)
    above = next_attempt(failures=2, failed_at=T0, created_at=T0, rand=lambda: 7.0)
    assert below == T0 + timedelta(minutes=1)
    assert above == T0 + timedelta(minutes=1) * (1 + backoff.JITTER)
