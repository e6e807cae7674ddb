"""Finality policy, reorg decisions and adaptive range sizing: pure rules, no I/O, no clock.

The scanner asks the node for facts (head, the tag's block number, block hashes) and asks this
module what they mean: which block is final, where two branches of the chain part, whether a
reorg may be followed or is a finality violation, and how wide the next ``eth_getLogs`` range
should be.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

FINALITY_TAGS = ("finalized", "safe")


# --- the final block ------------------------------------------------------------------------


def finality_tag(policy: str | int) -> str | None:
    """The block tag to ask the node for (``"finalized"``/``"safe"``), or None for N confirmations.

    Raises ``ValueError`` for anything else (settings validation refuses it earlier).
    """
    if isinstance(policy, str):
        if policy not in FINALITY_TAGS:
            raise ValueError(f"finality {policy!r} must be 'finalized', 'safe' or an integer")
        return policy
    if isinstance(policy, bool) or policy < 1:
        raise ValueError(f"finality {policy!r} must be a number of confirmations >= 1")
    return None


def final_block(policy: str | int, head: int, tag_number: int | None = None) -> int:
    """The highest final block under ``policy``; -1 when no block is final yet.

    For a tag policy it is the tag's block number (never above ``head``); for N confirmations it
    is ``head - N + 1`` (with 1 confirmation the head itself is final).
    """
    tag = finality_tag(policy)
    if tag is not None:
        if tag_number is None:
            raise ValueError(f"finality {tag!r} needs the number of the {tag!r} block")
        return max(-1, min(tag_number, head))
    assert isinstance(policy, int)
    return max(-1, head - policy + 1)


def is_final(block_number: int, final: int) -> bool:
    """Whether a transfer in ``block_number`` is final once ``final`` is the final block."""
    return block_number <= final


# --- reorgs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rewind:
    """Follow the reorg: the cursor goes back to ``ancestor``, everything above is orphaned."""

    ancestor: int
    depth: int  # blocks dropped: old cursor - ancestor


@dataclass(frozen=True, slots=True)
class Violation:
    """Refuse to follow the reorg: it reaches below final data (or beyond the stored window)."""

    ancestor: int | None  # None: no common block in the stored window
    final_floor: int | None  # the highest block holding final data, if any
    reason: str


def common_ancestor(stored: Mapping[int, str], chain: Mapping[int, str | None]) -> int | None:
    """The highest block number whose stored hash equals the chain's hash for it, or None.

    ``chain`` maps block numbers to the hash the node reports now (None: the node has no block
    at that height any more). Hashes are compared case-insensitively.
    """
    for number in sorted(stored, reverse=True):
        theirs = chain.get(number)
        if theirs is not None and theirs.lower() == stored[number].lower():
            return number
    return None


def decide_reorg(
    cursor: int,
    stored: Mapping[int, str],
    chain: Mapping[int, str | None],
    *,
    final_floor: int | None,
) -> Rewind | Violation:
    """What to do when the block at the cursor is no longer on the chain.

    ``stored`` holds the recent block hashes we scanned, ``chain`` the node's hashes for the same
    numbers, ``final_floor`` the highest block holding a transfer already marked final. The
    reorg may be followed only if the common ancestor is at or above ``final_floor``: below it a
    final transfer would have to be rewritten.
    """
    ancestor = common_ancestor(stored, chain)
    if ancestor is None:
        lowest = min(stored, default=cursor)
        return Violation(
            None,
            final_floor,
            f"no common ancestor in the {len(stored)} stored block hashes "
            f"(reorg deeper than block {lowest})",
        )
    if final_floor is not None and ancestor < final_floor:
        return Violation(
            ancestor,
            final_floor,
            f"reorg back to block {ancestor} replaces block {final_floor} "
            "that holds a final transfer",
        )
    return Rewind(ancestor, cursor - ancestor)


def chain_links(blocks: list[tuple[int, str, str]], parent_hash: str | None) -> bool:
    """Whether ``(number, hash, parent_hash)`` blocks form one unbroken chain in order, the
    first one a child of ``parent_hash`` (None: nothing to check against)."""
    expected = parent_hash
    previous: int | None = None
    for number, block_hash, parent in blocks:
        if previous is not None and number != previous + 1:
            return False
        if expected is not None and parent.lower() != expected.lower():
            return False
        expected, previous = block_hash, number
    return True


# --- adaptive block ranges ------------------------------------------------------------------


class RangeSizer:
    """Width of the next block range for ``eth_getLogs``/``trace_filter``.

    Starts at ``maximum``; a refusal halves the width and makes that half the ceiling (a
    provider with a hard limit is not asked for a refused width again and again); each success
    doubles the width again, up to the ceiling. After
    ``reprobe_after`` successes in a row the ceiling is forgotten, so a provider that refused a
    range once (a burst of logs, a busy moment) gets asked for wide ranges again. A refusal
    that states the node's limit (``stated``: "limited to 300") sets the width to that limit at
    once, and the limit stays the cap: a reprobe never asks above it again.
    """

    def __init__(self, maximum: int, *, reprobe_after: int = 32) -> None:
        if maximum < 1:
            raise ValueError(f"maximum range {maximum} must be at least 1 block")
        self.maximum = maximum
        self.reprobe_after = reprobe_after
        self.size = maximum
        self.ceiling = maximum
        self.cap = maximum  # the node's stated limit, once it said one
        self._streak = 0

    def refused(self, width: int, stated: int | None = None) -> bool:
        """Record that a range of ``width`` blocks was refused (``stated``: the widest range
        the refusal says the node allows); False if it cannot be split."""
        self._streak = 0
        if width <= 1:
            self.size = 1
            return False
        if stated is not None and 1 <= stated < width:
            self.cap = min(self.cap, stated)
            self.ceiling = min(self.ceiling, self.cap)
            self.size = min(self.size, self.ceiling)
            return True
        self.ceiling = min(self.ceiling, width // 2)
        self.size = min(self.size, self.ceiling)
        return True

    def succeeded(self, width: int) -> None:
        """Record that a range of ``width`` blocks was answered; grow if it was a full one."""
        self._streak += 1
        if self._streak >= self.reprobe_after:
            self.ceiling, self._streak = self.cap, 0
        if width >= self.size:
            self.size = min(self.ceiling, self.size * 2)

    def ranges(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Consecutive ``(start, end)`` ranges covering ``first..last`` at the current width
        (read again at each step, so a refusal in between narrows the rest)."""
        start = first
        while start <= last:
            end = min(last, start + self.size - 1)
            yield start, end
            start = end + 1


# --- balance guard --------------------------------------------------------------------------


def unexplained_growth(before: int, after: int, inflows: int, outflows: int = 0) -> int:
    """How much the balance grew beyond what the found inflows (less known outflows) explain.

    Positive: money arrived that the scanner did not see. Zero or negative: fully explained
    (a negative value means the wallet spent more than we know of, which the guard ignores).
    """
    return (after - before) - (inflows - outflows)
