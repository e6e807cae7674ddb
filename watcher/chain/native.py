"""Native inflows without traces: balance bisection over a block range.

For an externally owned wallet the balance only falls by its own transactions, which raise its
nonce. So a range whose balance and nonce are the same at both ends holds no native inflow (and
no spending) and needs nothing more; otherwise the range is halved (balance and nonce at the
midpoint, one batch for every open range at once) down to the single blocks where either
changed, and only those are read in full. Cost: O(1) per quiet range, O(log n) per block with
an inflow or the wallet's own transaction (the nonce is asked only where it moved).

Nodes without old state (pruned: ``missing trie node``, ``header not found``, Anvil's
``BlockOutOfRangeError``) cannot answer at old blocks: the part of the range they cannot bisect
is read in full instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from watcher.chain.calls import balance_call, nonce_call, quantity
from watcher.chain.rpc import RpcPool
from watcher.errors import RpcError

LOCATE_FANOUT = 8  # balances read per round trip when locating an unexplained inflow
_MISSING_STATE = (
    "missing trie node", "header not found", "state not available", "state is not available",
    "pruned", "historical state", "blockoutofrange", "out of range", "not found in",
    "unknown block", "state histor", "required historical", "old state",
)  # fmt: skip

Point = tuple[int, int]  # (balance, nonce) at a block


def missing_state(answer: Any) -> str | None:
    """Why the node could not give a balance or nonce at an old block (None: it could)."""
    if answer is None:
        return "no answer"
    if isinstance(answer, RpcError):
        text = str(answer)
        return text if any(w in text.lower() for w in _MISSING_STATE) else None
    return None


def point(balance: Any, nonce: Any) -> Point | None:
    """A (balance, nonce) pair from two answers; None when the node lacks that state.
    Other errors are raised."""
    if missing_state(balance) or missing_state(nonce):
        return None
    for answer in (balance, nonce):
        if isinstance(answer, BaseException):
            raise answer
    return quantity(balance), quantity(nonce)


@dataclass(slots=True)
class Bisection:
    """Where a range's balance or nonce changed: the blocks to read in full."""

    changed: list[int] = field(default_factory=list)  # single blocks found by bisection
    unreadable: list[tuple[int, int]] = field(default_factory=list)  # ranges without state
    reason: str = ""  # why the node could not give a balance (the first such answer)
    rounds: int = 0
    known: dict[int, Point] = field(default_factory=dict)  # every (balance, nonce) it used

    def blocks(self) -> list[int]:
        """Every block to read in full, ascending."""
        numbers = set(self.changed)
        for a, b in self.unreadable:
            numbers.update(range(a, b + 1))
        return sorted(numbers)


def bisect(
    pool: RpcPool, wallet: str, lo: int, hi: int, at_lo: Point, at_hi: Point,
    prior: Mapping[int, Point] | None = None,
) -> Bisection:  # fmt: skip
    """Blocks in ``lo + 1 .. hi`` where the wallet's (balance, nonce) changed, given their
    values at ``lo`` and ``hi``. Every open range is halved in the same round trip.

    ``prior`` are the points an earlier bisection of the same range found (``Bisection.known``):
    when its ends equal ``at_lo`` and ``at_hi`` its inner points are taken as they are, so the
    same range is not bisected twice (the guard's rescan)."""
    found = Bisection()
    known: dict[int, Point] = {lo: at_lo, hi: at_hi}
    if prior and prior.get(lo) == at_lo and prior.get(hi) == at_hi:
        known.update({n: p for n, p in prior.items() if lo < n < hi})
    marks = sorted(known)
    pending = list(pairwise(marks))
    found.known = known
    while pending:
        split: list[tuple[int, int, int]] = []
        for a, b in pending:
            if known[a] == known[b]:
                continue  # quiet: nothing arrived, nothing was sent
            if b - a == 1:
                found.changed.append(b)
                continue
            split.append((a, (a + b) // 2, b))
        if not split:
            break
        # The nonce never falls: equal at both ends, it is the same at the midpoint (not asked).
        calls = [balance_call(wallet, m) for _, m, _ in split]
        asks = [(a, m, b) for a, m, b in split if known[a][1] != known[b][1]]
        calls += [nonce_call(wallet, m) for _, m, _ in asks]
        answers = pool.batch(calls, return_errors=True)
        nonces = dict(zip((m for _, m, _ in asks), answers[len(split) :], strict=True))
        found.rounds += 1
        pending = []
        for (a, m, b), balance in zip(split, answers, strict=False):
            nonce = nonces.get(m, hex(known[a][1]))
            got = point(balance, nonce)
            if got is None:
                found.reason = found.reason or str(missing_state(balance) or missing_state(nonce))
                found.unreadable.append((a + 1, b))
                continue
            known[m] = got
            pending += [(a, m), (m, b)]
    found.changed.sort()
    return found


def locate_jump(
    pool: RpcPool,
    wallet: str,
    first: int,
    last: int,
    before: int,
    explained: Mapping[int, int],
    known: Mapping[int, int] | None = None,
) -> int:
    """The first block in ``first..last`` at which the wallet's balance exceeds ``before`` plus
    what the found inflows explain up to that block (searched over historical balances,
    ``LOCATE_FANOUT`` per round trip). ``last`` is assumed to exceed it. ``known`` balances
    by block (the chunk's bisection points) narrow the search before anything is asked: a
    jump bisection found between two adjacent points costs no request."""
    prefix: dict[int, int] = {}
    total = 0
    for n in range(first, last + 1):
        total += explained.get(n, 0)
        prefix[n] = total
    lo, hi = first - 1, last  # the excess is not there at lo (by definition), there at hi
    for at in sorted(n for n in (known or {}) if first <= n < last):
        assert known is not None
        if known[at] - before > prefix[at]:
            hi = at
            break
        lo = at
    while hi - lo > 1:
        step = max(1, (hi - lo) // (LOCATE_FANOUT + 1))
        points: Sequence[int] = list(range(lo + step, hi, step))[:LOCATE_FANOUT]
        balances = pool.batch([balance_call(wallet, p) for p in points])
        for at, raw in zip(points, balances, strict=True):
            if quantity(raw) - before > prefix[at]:
                hi = at
                break
            lo = at
    return hi
