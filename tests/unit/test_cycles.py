"""Monthly cycles: where a funded month starts and ends, when to renew, when a retainer lapses."""

from __future__ import annotations

import calendar
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from watcher.domain.cycles import (
    Period,
    PreviousCycle,
    deadline_passed,
    lapsed,
    next_period,
    period_in_run,
    renewal_due,
)

START = datetime(2025, 3, 1, tzinfo=UTC)


def previous_of(period: Period, *, lapsed: bool = False) -> PreviousCycle:
    return PreviousCycle(
        period_index=period.period_index,
        anchor_at=period.anchor_at,
        anchor_index=period.anchor_index,
        ends_at=period.ends_at,
        lapsed=lapsed,
    )


@st.composite
def anchors(draw: st.DrawFn) -> datetime:
    """UTC instants, with month ends (28th..31st) and leap days drawn often."""
    year = draw(st.integers(min_value=1999, max_value=2101))
    month = draw(st.integers(min_value=1, max_value=12))
    last = calendar.monthrange(year, month)[1]
    day = draw(
        st.one_of(st.integers(min_value=1, max_value=last), st.sampled_from([28, 29, 30, 31]))
    )
    return datetime(
        year,
        month,
        min(day, last),
        draw(st.integers(min_value=0, max_value=23)),
        draw(st.integers(min_value=0, max_value=59)),
        draw(st.integers(min_value=0, max_value=59)),
        draw(st.integers(min_value=0, max_value=999_999)),
        tzinfo=UTC,
    )


# --- month 1 and continuation ---------------------------------------------------------------


def test_month_one_starts_at_the_payments_block_time_when_after_retainer_start() -> None:
    """Month 1 starts at the payment's block time if that is after the retainer's start."""
    final = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)

    period = next_period(period_index=1, previous=None, retainer_start=START, paid_at=final)

    assert (period.period_index, period.starts_at) == (1, final)
    assert period.ends_at == datetime(2025, 4, 14, 9, 30, tzinfo=UTC)


def test_month_one_starts_at_retainer_start_when_paid_in_advance() -> None:
    """Month 1 starts on the retainer's start date when the payment was mined before it."""
    final = datetime(2025, 2, 20, 17, 0, tzinfo=UTC)

    period = next_period(period_index=1, previous=None, retainer_start=START, paid_at=final)

    assert period.starts_at == START
    assert period.ends_at == datetime(2025, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize("paid_days_before_end", [10, 0, -2])
def test_month_k_plus_one_starts_exactly_where_month_k_ends(paid_days_before_end: int) -> None:
    """Month k+1 starts at month k's end, whether it was paid early, on the day, or in grace."""
    month1 = next_period(period_index=1, previous=None, retainer_start=START, paid_at=START)
    final = month1.ends_at - timedelta(days=paid_days_before_end)

    month2 = next_period(
        period_index=2, previous=previous_of(month1), retainer_start=START, paid_at=final
    )

    assert month2.period_index == 2
    assert month2.starts_at == month1.ends_at
    assert month2.ends_at == datetime(2025, 5, 1, tzinfo=UTC)


def test_jan_31_anchor_clamps_without_drift_over_24_months() -> None:
    """A Jan 31 anchor ends month 1 on Feb 28 (29 in leap years), month 2 on Mar 31, every month
    on its last day, for 24 months."""
    for year in (2023, 2024):
        anchor = datetime(year, 1, 31, 10, 0, tzinfo=UTC)
        periods = [period_in_run(anchor, 1, k) for k in range(1, 25)]

        assert periods[0].ends_at == datetime(
            year, 2, calendar.monthrange(year, 2)[1], 10, 0, tzinfo=UTC
        )
        assert periods[1].ends_at == datetime(year, 3, 31, 10, 0, tzinfo=UTC)
        for period in periods:
            end = period.ends_at
            assert end.day == calendar.monthrange(end.year, end.month)[1]
            assert (end.hour, end.minute) == (10, 0)
        assert periods[-1].ends_at == datetime(year + 2, 1, 31, 10, 0, tzinfo=UTC)


def test_chained_months_equal_the_run_computed_from_its_anchor() -> None:
    """Renewing month after month through next_period gives the anchor's run, clamped, no drift."""
    anchor = datetime(2024, 1, 31, tzinfo=UTC)
    period = next_period(period_index=1, previous=None, retainer_start=anchor, paid_at=anchor)
    for k in range(2, 26):
        period = next_period(
            period_index=k,
            previous=previous_of(period),
            retainer_start=anchor,
            paid_at=period.ends_at - timedelta(days=5),
        )
        assert period == period_in_run(anchor, 1, k)
    assert period.starts_at == datetime(2026, 1, 31, tzinfo=UTC)


@given(
    anchor=anchors(),
    first=st.integers(min_value=1, max_value=12),
    count=st.integers(min_value=1, max_value=48),
)
@example(anchor=datetime(2024, 2, 29, tzinfo=UTC), first=1, count=48)
@example(anchor=datetime(2023, 1, 31, 23, 59, 59, tzinfo=UTC), first=1, count=26)
@example(anchor=datetime(2024, 1, 30, tzinfo=UTC), first=3, count=14)
@example(anchor=datetime(2000, 2, 29, tzinfo=UTC), first=1, count=48)
def test_periods_tile_without_gaps_or_overlaps(anchor: datetime, first: int, count: int) -> None:
    """Consecutive months of a run tile time exactly and each lasts 28 to 31 days."""
    periods = [period_in_run(anchor, first, first + k) for k in range(count)]

    assert periods[0].starts_at == anchor
    for earlier, later in itertools.pairwise(periods):
        assert later.starts_at == earlier.ends_at
        assert later.period_index == earlier.period_index + 1
    for period in periods:
        assert period.starts_at.tzinfo is UTC and period.ends_at.tzinfo is UTC
        assert timedelta(days=28) <= period.ends_at - period.starts_at <= timedelta(days=31)
        start = period.starts_at
        last = calendar.monthrange(start.year, start.month)[1]
        assert start.day == min(anchor.day, last)  # no drift: the anchor's day, clamped
        assert start.time() == anchor.time()


def test_period_before_its_run_is_refused() -> None:
    """A period index before the run's first month is an error, naming both indexes."""
    with pytest.raises(ValueError, match="period 2 is before its run's first period 3"):
        period_in_run(START, 3, 2)


# --- after a lapse --------------------------------------------------------------------------


def test_after_a_lapse_the_next_month_anchors_at_its_finality_time() -> None:
    """After a lapse, the next funded month starts at its payment's block time: no back-dating."""
    month1 = period_in_run(START, 1, 1)
    final = month1.ends_at + timedelta(days=20, hours=3)

    month2 = next_period(
        period_index=2,
        previous=previous_of(month1, lapsed=True),
        retainer_start=START,
        paid_at=final,
    )

    assert (month2.period_index, month2.starts_at, month2.anchor_at) == (2, final, final)
    assert month2.anchor_index == 2
    assert month2.ends_at == datetime(2025, 5, 21, 3, 0, tzinfo=UTC)
    month3 = next_period(
        period_index=3, previous=previous_of(month2), retainer_start=START, paid_at=final
    )
    assert month3.starts_at == month2.ends_at


def test_a_gap_in_period_indexes_starts_a_new_run() -> None:
    """A month whose previous index is not the one just before it anchors at its block time."""
    month1 = period_in_run(START, 1, 1)
    final = month1.ends_at + timedelta(days=40)

    month3 = next_period(
        period_index=3, previous=previous_of(month1), retainer_start=START, paid_at=final
    )

    assert month3.starts_at == final


# --- renewal and lapse boundaries -----------------------------------------------------------

ENDS = datetime(2025, 4, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICRO = timedelta(microseconds=1)


@pytest.mark.parametrize("lead_days", [0, 1, 5, 30])
def test_renewal_due_exactly_lead_days_before_the_end(lead_days: int) -> None:
    """The next invoice is due at ends_at − lead days, and not a second (or microsecond) before."""
    at = ENDS - timedelta(days=lead_days)

    assert renewal_due(ENDS, lead_days, at)
    assert renewal_due(ENDS, lead_days, at + SECOND)
    assert not renewal_due(ENDS, lead_days, at - SECOND)
    assert not renewal_due(ENDS, lead_days, at - MICRO)


@pytest.mark.parametrize("grace_days", [0, 3, 10])
def test_lapsed_exactly_at_end_plus_grace(grace_days: int) -> None:
    """A month unfunded at ends_at + grace lapses at that instant, and not a second before."""
    at = ENDS + timedelta(days=grace_days)

    assert lapsed(ENDS, grace_days, at)
    assert lapsed(ENDS, grace_days, at + SECOND)
    assert not lapsed(ENDS, grace_days, at - SECOND)
    assert not lapsed(ENDS, grace_days, at - MICRO)


@given(
    ends=anchors(),
    lead=st.integers(min_value=0, max_value=31),
    grace=st.integers(min_value=0, max_value=31),
    offset=st.integers(min_value=-(40 * 86_400), max_value=40 * 86_400),
    later=st.integers(min_value=0, max_value=40 * 86_400),
)
def test_renewal_and_lapse_once_reached_stay_reached(
    ends: datetime, lead: int, grace: int, offset: int, later: int
) -> None:
    """Renewal and lapse never switch back off as time passes, and a lapse implies renewal due."""
    now = ends + timedelta(seconds=offset)
    then = now + timedelta(seconds=later)

    if renewal_due(ends, lead, now):
        assert renewal_due(ends, lead, then)
    if lapsed(ends, grace, now):
        assert lapsed(ends, grace, then)
        assert renewal_due(ends, lead, now)


# --- deadlines on the chain's clock ---------------------------------------------------------


def test_a_deadline_passes_only_when_both_clocks_are_past_it() -> None:
    """A deadline has passed only when the watcher's clock reached it and the chain's scanned
    clock (the cursor block's timestamp) is later than it."""
    deadline = datetime(2025, 4, 4, 9, 0, tzinfo=UTC)
    later = deadline + timedelta(seconds=1)

    assert deadline_passed(deadline, later, later)
    assert not deadline_passed(deadline, later, deadline)  # no block after it scanned yet
    assert not deadline_passed(deadline, later, None)  # the chain was never scanned
    assert not deadline_passed(deadline, deadline - timedelta(seconds=1), later)
