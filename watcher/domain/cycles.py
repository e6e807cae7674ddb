"""Monthly cycles: when a funded month starts and ends, when to renew, when a retainer lapses.

A run of consecutive months hangs off one anchor: month ``k`` of a run anchored at ``a`` with
first index ``k0`` covers ``[a + (k-k0) months, a + (k-k0+1) months)``, end dates clamped
(Jan 31 -> Feb 28/29). Computing every boundary from the anchor, never from the previous end,
keeps months tiling without drift. A lapse ends a run; the next payment anchors a new one at
its block's timestamp (no back-dating). Deadlines are judged by the chain's clock: a payment's
time is its block's timestamp, and a deadline has passed only once the chain has been scanned
past a block later than it (``deadline_passed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from watcher.domain.billing import add_months


@dataclass(frozen=True, slots=True)
class Period:
    period_index: int
    anchor_at: datetime
    anchor_index: int
    starts_at: datetime
    ends_at: datetime


def period_in_run(anchor_at: datetime, anchor_index: int, period_index: int) -> Period:
    offset = period_index - anchor_index
    if offset < 0:
        raise ValueError(f"period {period_index} is before its run's first period {anchor_index}")
    return Period(
        period_index=period_index,
        anchor_at=anchor_at,
        anchor_index=anchor_index,
        starts_at=add_months(anchor_at, offset),
        ends_at=add_months(anchor_at, offset + 1),
    )


@dataclass(frozen=True, slots=True)
class PreviousCycle:
    period_index: int
    anchor_at: datetime
    anchor_index: int
    ends_at: datetime
    lapsed: bool


def next_period(
    *,
    period_index: int,
    previous: PreviousCycle | None,
    retainer_start: datetime,
    paid_at: datetime,
) -> Period:
    """The period a newly funded month covers.

    Month 1 (or the first after a lapse) starts at the later of the retainer's start and the
    payment's time (its block's timestamp). Otherwise it continues the previous month's run.
    """
    if previous is None:
        return period_in_run(max(retainer_start, paid_at), period_index, period_index)
    if previous.lapsed or previous.period_index != period_index - 1:
        return period_in_run(paid_at, period_index, period_index)
    return period_in_run(previous.anchor_at, previous.anchor_index, period_index)


def renewal_due(cycle_ends_at: datetime, lead_days: int, now: datetime) -> bool:
    """Whether the next month's invoice should be issued now."""
    return now >= cycle_ends_at - timedelta(days=lead_days)


def lapse_deadline(cycle_ends_at: datetime, grace_days: int) -> datetime:
    """When a month that ended unfunded runs out of grace."""
    return cycle_ends_at + timedelta(days=grace_days)


def lapsed(cycle_ends_at: datetime, grace_days: int, now: datetime) -> bool:
    """Whether a month that ended unfunded has run out of grace at ``now`` (a payment's block
    time, when settlement asks whether the payment came after the lapse)."""
    return now >= lapse_deadline(cycle_ends_at, grace_days)


def deadline_passed(deadline: datetime, now: datetime, chain_time: datetime | None) -> bool:
    """Whether ``deadline`` is behind on both clocks: the watcher's ``now``, and the chain's as
    far as it has been scanned (``chain_time``: the timestamp of the cursor's block; None when
    unknown). A stopped or blind scanner never lets a deadline pass: a payment mined before it
    may still be unseen."""
    return now >= deadline and chain_time is not None and chain_time > deadline
