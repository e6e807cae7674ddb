"""When to try a failed delivery again, and when to give up. Pure: no clock, no randomness.

The ladder after the 1st, 2nd, ... failure is 10 s, 1 min, 5 min, 30 min, 2 h, 6 h, then every
12 h. Retries stop 3 days after the event was created: the last retry is moved to that moment,
and a failure at or after it is final (dead-lettered). A delivery that starts late (the daemon
was down for days, or the operator re-queued a dead delivery) still climbs the short ladder
once (six retries, about 9 hours) before it is dead-lettered, so one blip never kills it.

Jitter stretches each delay by up to ``JITTER`` (10 %) so that many deliveries failing together
do not retry in lockstep; the random number is an argument, so tests pass a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

LADDER: tuple[timedelta, ...] = (
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=6),
)
STEADY = timedelta(hours=12)
WINDOW = timedelta(days=3)
JITTER = 0.1


def no_jitter() -> float:
    """A random source that always returns 0: the exact ladder."""
    return 0.0


def delay_after(failures: int) -> timedelta:
    """The pause after the ``failures``-th consecutive failure (1-based), before jitter."""
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    return LADDER[failures - 1] if failures <= len(LADDER) else STEADY


def next_attempt(
    *,
    failures: int,
    failed_at: datetime,
    created_at: datetime,
    rand: Callable[[], float] = no_jitter,
) -> datetime | None:
    """When to retry after the ``failures``-th consecutive failure at ``failed_at``; None = dead.

    ``created_at`` is the event's creation time; ``rand`` returns a float in [0, 1).
    """
    deadline = created_at + WINDOW
    ladder_done = failures > len(LADDER)
    if ladder_done and failed_at >= deadline:
        return None
    fraction = min(max(rand(), 0.0), 1.0)
    retry_at = failed_at + delay_after(failures) * (1 + JITTER * fraction)
    if failed_at < deadline:
        retry_at = min(retry_at, deadline)
    return retry_at
