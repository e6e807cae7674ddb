"""Finality policy, reorg decisions and adaptive range sizing (pure rules)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.domain.finality import (
    RangeSizer,
    Rewind,
    Violation,
    chain_links,
    common_ancestor,
    decide_reorg,
    final_block,
    finality_tag,
    is_final,
    unexplained_growth,
)

# --- the final block ------------------------------------------------------------------------


def test_tag_policies_ask_for_their_tag_and_confirmations_ask_for_none() -> None:
    """finalized and safe are block tags; an integer policy needs only the head."""
    assert finality_tag("finalized") == "finalized"
    assert finality_tag("safe") == "safe"
    assert finality_tag(12) is None


@pytest.mark.parametrize("policy", ["latest", "pending", 0, -3, True])
def test_unknown_policies_are_refused(policy: str | int) -> None:
    """A policy that is neither a known tag nor a positive number of confirmations is refused."""
    with pytest.raises(ValueError, match="finality"):
        finality_tag(policy)


def test_tag_policy_uses_the_tag_number() -> None:
    """Under finalized/safe the final block is the number the node reports for the tag."""
    assert final_block("finalized", head=100, tag_number=36) == 36
    assert final_block("safe", head=100, tag_number=68) == 68


def test_tag_number_above_the_head_is_clamped() -> None:
    """A tag reported above the head (two load-balanced backends) never exceeds the head."""
    assert final_block("finalized", head=10, tag_number=12) == 10


def test_tag_policy_without_the_tag_number_is_an_error() -> None:
    """Asking for a tag's final block without the tag's number is a programming error."""
    with pytest.raises(ValueError, match="needs the number"):
        final_block("safe", head=10)


@pytest.mark.parametrize(
    ("confirmations", "head", "expected"), [(1, 50, 50), (3, 50, 48), (64, 50, -1), (51, 50, 0)]
)
def test_confirmations_policy_is_head_minus_n_plus_one(
    confirmations: int, head: int, expected: int
) -> None:
    """With N confirmations the final block is head - N + 1, and -1 when none is final yet."""
    assert final_block(confirmations, head=head) == expected


@given(st.integers(1, 500), st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_block_is_final_exactly_when_n_blocks_including_it_exist(
    n: int, head: int, block: int
) -> None:
    """Under N confirmations a block is final iff head - block + 1 >= N."""
    assert is_final(block, final_block(n, head=head)) == (block <= head and head - block + 1 >= n)


# --- reorgs ---------------------------------------------------------------------------------


def _hashes(prefix: str, numbers: range) -> dict[int, str]:
    return {n: f"0x{prefix}{n:04x}" for n in numbers}


def test_common_ancestor_is_the_highest_block_both_branches_share() -> None:
    """Stored and chain hashes agree up to block 7, differ from 8: the ancestor is 7."""
    stored = _hashes("aa", range(0, 11))
    chain: dict[int, str | None] = {**_hashes("aa", range(0, 8)), **_hashes("bb", range(8, 11))}
    assert common_ancestor(stored, chain) == 7


def test_blocks_missing_from_the_chain_count_as_replaced() -> None:
    """After a rollback the chain has no block at the stored heights: they are not shared."""
    stored = _hashes("aa", range(0, 11))
    chain: dict[int, str | None] = {**_hashes("aa", range(0, 6)), 6: None, 7: None}
    assert common_ancestor(stored, chain) == 5


def test_hashes_compare_case_insensitively() -> None:
    """A node answering in upper-case hex is the same block."""
    assert common_ancestor({3: "0xabc"}, {3: "0xABC"}) == 3


def test_reorg_above_final_data_rewinds_to_the_ancestor() -> None:
    """A reorg whose ancestor is at or above the highest final transfer is followed."""
    stored = _hashes("aa", range(90, 101))
    chain: dict[int, str | None] = {**_hashes("aa", range(90, 97)), **_hashes("bb", range(97, 101))}
    assert decide_reorg(100, stored, chain, final_floor=96) == Rewind(ancestor=96, depth=4)
    assert decide_reorg(100, stored, chain, final_floor=None) == Rewind(ancestor=96, depth=4)


def test_reorg_below_a_final_transfer_is_a_violation() -> None:
    """If the ancestor is below a block holding a final transfer, the reorg is refused."""
    stored = _hashes("aa", range(90, 101))
    chain: dict[int, str | None] = {**_hashes("aa", range(90, 95)), **_hashes("bb", range(95, 101))}
    decision = decide_reorg(100, stored, chain, final_floor=97)
    assert isinstance(decision, Violation)
    assert (decision.ancestor, decision.final_floor) == (94, 97)
    assert "block 97" in decision.reason and "final" in decision.reason


def test_reorg_deeper_than_the_stored_window_is_a_violation() -> None:
    """With no shared block among the stored hashes there is nowhere safe to rewind to."""
    stored = _hashes("aa", range(90, 101))
    decision = decide_reorg(100, stored, _hashes("bb", range(90, 101)), final_floor=None)
    assert isinstance(decision, Violation) and decision.ancestor is None
    assert "deeper than block 90" in decision.reason


@given(st.integers(0, 60), st.integers(1, 60), st.integers(0, 60))
def test_any_fork_is_rewound_to_the_fork_point(start: int, length: int, fork: int) -> None:
    """For any window and fork inside it, the decision rewinds exactly to the fork point."""
    cursor = start + length
    fork = min(start + fork % length, cursor)
    stored = _hashes("aa", range(start, cursor + 1))
    chain: dict[int, str | None] = {
        **_hashes("aa", range(start, fork + 1)),
        **_hashes("bb", range(fork + 1, cursor + 1)),
    }
    assert decide_reorg(cursor, stored, chain, final_floor=None) == Rewind(fork, cursor - fork)


def test_blocks_link_by_parent_hash() -> None:
    """Consecutive blocks whose parent hashes chain up link, from the expected parent on."""
    blocks = [(5, "0x5", "0x4"), (6, "0x6", "0x5"), (7, "0x7", "0x6")]
    assert chain_links(blocks, "0x4")
    assert chain_links(blocks, None)
    assert not chain_links(blocks, "0xdead")
    assert not chain_links([(5, "0x5", "0x4"), (6, "0x6", "0xother")], None)
    assert not chain_links([(5, "0x5", "0x4"), (7, "0x7", "0x5")], None)
    assert chain_links([], "0x4")


# --- adaptive ranges ------------------------------------------------------------------------


def test_ranges_cover_the_span_at_the_current_width() -> None:
    """A fresh sizer cuts a span into maximum-width ranges, the last one shorter."""
    assert list(RangeSizer(4).ranges(10, 20)) == [(10, 13), (14, 17), (18, 20)]


def test_refusal_halves_and_caps_the_width() -> None:
    """A refused range halves the width, and success does not grow past that half at once."""
    sizer = RangeSizer(2000)
    assert sizer.refused(2000)
    assert sizer.size == 1000
    sizer.succeeded(1000)
    assert sizer.size == 1000


def test_success_grows_back_after_a_run_of_successes() -> None:
    """After reprobe_after successes the ceiling lifts and the width doubles back to maximum."""
    sizer = RangeSizer(800, reprobe_after=3)
    sizer.refused(800)
    sizer.refused(400)
    assert sizer.size == 200
    for _ in range(3):
        sizer.succeeded(sizer.size)
    assert sizer.size == 400
    sizer.succeeded(400)
    sizer.succeeded(800)
    assert sizer.size == 800


def test_a_stated_limit_sets_the_width_and_stays_the_cap_after_a_reprobe() -> None:
    """A refusal naming the node's limit sets the width to it at once (no halving), and the
    reprobe after a run of successes does not ask above it again."""
    sizer = RangeSizer(2000, reprobe_after=3)
    assert sizer.refused(1000, stated=300)
    assert sizer.size == 300
    for _ in range(10):
        sizer.succeeded(sizer.size)
        assert sizer.size == 300
    assert list(sizer.ranges(1, 1000)) == [(1, 300), (301, 600), (601, 900), (901, 1000)]


def test_a_stated_limit_not_below_the_refused_width_halves_as_before() -> None:
    """A stated number that would not narrow the refused range is ignored: the width halves."""
    sizer = RangeSizer(2000)
    assert sizer.refused(1000, stated=5000)
    assert sizer.size == 500


def test_single_block_refusal_cannot_be_split() -> None:
    """A refused one-block range reports that there is nothing left to split."""
    sizer = RangeSizer(10)
    assert not sizer.refused(1)
    assert sizer.size == 1


def test_sizer_needs_a_positive_maximum() -> None:
    """A maximum below one block is refused when the sizer is built."""
    with pytest.raises(ValueError, match="at least 1 block"):
        RangeSizer(0)


@given(
    st.integers(1, 3000),
    st.lists(st.tuples(st.booleans(), st.integers(1, 3000)), max_size=60),
)
def test_width_stays_within_bounds(maximum: int, outcomes: list[tuple[bool, int]]) -> None:
    """Whatever refusals and successes happen, the width stays between 1 and the maximum."""
    sizer = RangeSizer(maximum, reprobe_after=5)
    for refused, width in outcomes:
        if refused:
            sizer.refused(width)
        else:
            sizer.succeeded(width)
        assert 1 <= sizer.size <= maximum


@given(st.integers(1, 50), st.integers(0, 1000), st.integers(0, 400), st.data())
def test_ranges_tile_the_span_without_gap_or_overlap(
    maximum: int, first: int, extra: int, data: st.DataObject
) -> None:
    """Ranges cover first..last exactly once each, even when refusals narrow them midway."""
    last = first + extra
    sizer = RangeSizer(maximum)
    covered: list[int] = []
    for start, end in sizer.ranges(first, last):
        assert 1 <= end - start + 1 <= maximum
        covered += range(start, end + 1)
        if data.draw(st.booleans()):
            sizer.refused(end - start + 1)
    assert covered == list(range(first, last + 1))


# --- balance guard --------------------------------------------------------------------------


def test_growth_beyond_found_inflows_is_unexplained() -> None:
    """Balance up 10 with 7 found: 3 unexplained; fully explained or spent: nothing."""
    assert unexplained_growth(100, 110, inflows=7) == 3
    assert unexplained_growth(100, 107, inflows=7) == 0
    assert unexplained_growth(100, 95, inflows=7, outflows=12) == 0
    assert unexplained_growth(100, 90, inflows=0) < 0
