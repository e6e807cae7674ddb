"""One poll of one chain: detect inflows up to the head, follow reorgs, mark transfers final.

The cursor is the last block fully scanned. Each chunk read becomes one ``Findings``
(``watcher.chain.findings``: its inflows, block hashes, balance, guard events and the new
cursor) handed to the ``ScanLedger`` (``watcher.chain.port``) as one unit, so a crash never
leaves a gap or a half-stored block; on the database that unit is one transaction with the
settlement hooks inside (``watcher.ledger.scanning``). Nothing here imports the store, and the
scanner never reads invoices: a poll's cost depends on the chain, not on how many invoices
are open. A transfer found again after a reorg keeps its uid (tx hash, kind, log index /
trace position), so the ledger revives its row.

No single answer is trusted to lose a payment: a head below the cursor whose hash matches the
stored hash at that height is a node lagging, not a reorg (the poll moves to the next URL or
waits); only the reorg path, which rewinds the cursor, orphans; a receipt that cannot be
confirmed at finality is retried (``watcher.chain.confirm``); balance growth the found inflows
do not explain rescans the chunk before it alerts (``watcher.chain.guards``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

import structlog

from watcher.chain import guards, sources
from watcher.chain.findings import Findings, GuardEvent, ScanReport, block_time, block_times
from watcher.chain.port import ScanLedger
from watcher.chain.reorgs import Reorgs
from watcher.chain.rpc import RpcPool
from watcher.chain.sources import Chunk
from watcher.domain.finality import final_block, finality_tag
from watcher.errors import RpcError, WatcherError
from watcher.settings import ChainSettings

log = structlog.get_logger("watcher.chain.scanner")

__all__ = ["ScanReport", "poll_chain"]

POSTS_PER_CHUNK = 2  # a chunk's blocks fill this many batches of pool.max_batch entries
MAX_REORGS_PER_POLL = 3
ANY_BLOCK = 2**62  # ``ledger.waiting(ANY_BLOCK)``: every seen transfer, whatever its block


def poll_chain(
    chain: ChainSettings,
    pool: RpcPool,
    ledger: ScanLedger,
    *,
    from_block: int | None = None,
    to_block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    native: bool = True,
) -> ScanReport:
    """One poll: head and final block, reorg check, scan up to the head (or ``to_block``),
    balance guard, finality. Idle (no new block, nothing awaiting finality) it costs 1 request.
    ``native=False`` says no retainer on this chain is priced in the native asset: with the
    balance guard off too, native inflows are not read at all.

    What it reads of the stored state, and every result, goes through ``ledger`` (on the
    database: ``watcher.ledger.scanning.scan_chain``). ``from_block`` starts a new cursor
    there, or rewinds an existing one to rescan (transfers already stored are not duplicated);
    it may not skip blocks past the cursor (``Refused``). ``progress(cursor, target)`` is called
    after each chunk. Raises ``RpcError`` when the node cannot be read (the cursor stays at the
    last complete chunk) and ``FinalityViolation`` when a reorg reaches below a final transfer;
    both are recorded through ``ledger.record_poll``.
    """
    scan = _ChainScan(chain, pool, ledger, progress)
    scan.native = native or chain.balance_guard
    return scan.run(from_block, to_block)


class _ChainScan(Reorgs):
    """One poll: the head, the chunks up to it, the balance guard (reorgs and finality:
    ``Reorgs``; cursor and chain state: ``ScanState``)."""

    final_read = True  # whether this poll read the final block (False: the last one seen)
    head_header: object = None  # the head's header as the poll's first request read it
    head_number = -1

    # -- the poll ----------------------------------------------------------------------------

    def run(self, from_block: int | None, to_block: int | None) -> ScanReport:
        requests_before = self.pool.request_count
        self._load_state(from_block)
        cursor_before = self.cursor
        lagging = False
        try:
            self._refuse_if_halted()
            head, head_hash, final, lagging = self._trusted_head()
            if lagging:
                self._record_lag(head)
            else:
                final = self._poll(head, head_hash, final, to_block)
        except WatcherError as exc:
            self._record(head=None, final=None, error=exc)
            raise
        report = ScanReport(
            chain=self.chain.name,
            head=head,
            final_block=final,
            cursor_before=cursor_before,
            cursor_after=self.cursor,
            requests=self.pool.request_count - requests_before,
            complete=self.incomplete is None,
            lagging=lagging,
            **self.counts,
        )
        log.info("scan.done", **asdict(report))
        return report

    def _poll(self, head: int, head_hash: str, final: int, to_block: int | None) -> int:
        """Reorg check, scan to the head, finality; the final block used (never lower than
        one seen before).

        The finality tag's header is read only when it matters (``_head``); otherwise ``final``
        is the last final block seen, a block that stays final. A poll over more than one
        chunk (catching up) reads it before scanning, so transfers in blocks already final
        become final at once; one that found transfers reads it after scanning."""
        if final < self.final_seen:  # a lagging backend's tag: never a reorg by itself
            self.log.info("scan.final_behind", final=final, final_seen=self.final_seen)
            final = self.final_seen
        target = head if to_block is None else min(head, to_block)
        if not self.final_read and target - self.cursor > self._chunk_width():
            final = max(final, self._read_final(head))
        self.final_at_start = final
        if self.cursor_hash is not None and (
            head < self.cursor or (head == self.cursor and head_hash != self.cursor_hash)
        ):
            self._reorg(head)
        if self.cursor < target or self.ledger.waiting(final):
            self._scan_to(target)
            if not self.final_read and self.counts["found"]:
                final = max(final, self._read_final(head))
            self._finalize(final)
        else:
            self.log.debug("scan.idle", head=head, cursor=self.cursor)
        self._record(head=head, final=final, error=None)
        return final

    def _trusted_head(self) -> tuple[int, str, int, bool]:
        """Head, its hash, the final block, and whether every URL is behind the cursor.

        A head below the cursor is lag when the node's hash at its own head equals the stored
        hash at that height (or that height is older than the stored window: a reorg that deep
        still shows, as a broken parent link, once the node passes the cursor): the next URL is
        asked, and if all lag the poll reads nothing. A mismatch there is a reorg.
        """
        head, head_hash, final = self._head()
        for _ in range(len(self.pool.urls_redacted)):
            if self.cursor_hash is None or head >= self.cursor:
                return head, head_hash, final, False
            stored = self.ledger.stored_hash(head)
            if stored is not None and not sources.same(stored, head_hash):
                return head, head_hash, final, False  # not our block at its own head: a reorg
            self.log.warning(
                "scan.lagging", url=self.pool.current_url_redacted, head=head, cursor=self.cursor
            )
            if not self.pool.fail_over(f"head {head} is behind the cursor {self.cursor}"):
                break
            head, head_hash, final = self._head()
        if self.cursor_hash is None or head >= self.cursor:
            return head, head_hash, final, False
        return head, head_hash, final, True

    def _head(self) -> tuple[int, str, int]:
        """Head number and hash and the final block, in one request.

        The finality tag's header is asked only when something awaits finality, or no final
        block was ever recorded; otherwise the final block is the last one seen
        (``final_read`` False: ``_poll`` reads the tag later if the poll needs it).

        The chunk ending at the head does not read the head's header again: its batch asks its
        end balances by the head's hash (``watcher.chain.links``), which a backend behind the
        one that answered here (a load balancer) refuses, where it would answer the range's
        logs and traces with ``[]`` (a range with no end balance to ask reads the header)."""
        tag = finality_tag(self.chain.finality)
        ask_tag = tag is not None and (self.final_seen < 0 or bool(self.ledger.waiting(ANY_BLOCK)))
        calls = [sources.block_call("latest")]
        calls += [sources.block_call(tag)] if tag is not None and ask_tag else []
        answers = self.pool.batch(calls)
        head = sources.parse_block(answers[0], -1)
        self.head_header, self.head_number = answers[0], head.number
        self.final_read = tag is None or ask_tag
        if not self.final_read:
            return head.number, head.hash, max(self.final_seen, -1)
        tag_number = sources.parse_block(answers[1], -1).number if tag else None
        return head.number, head.hash, final_block(self.chain.finality, head.number, tag_number)

    def _read_final(self, head: int) -> int:
        """The finality tag's block now (its header, one request), at most ``head``."""
        tag = finality_tag(self.chain.finality)
        assert tag is not None
        (raw,) = self.pool.batch([sources.block_call(tag)])
        self.final_read = True
        return final_block(self.chain.finality, head, sources.parse_block(raw, -1).number)

    # -- scanning ----------------------------------------------------------------------------

    def _chunk_width(self) -> int:
        """Blocks per chunk: what the reader reads per block fills POSTS_PER_CHUNK batches."""
        return max(1, sources.chunk_width(self.chain, self.pool.max_batch * POSTS_PER_CHUNK))

    def _scan_to(self, target: int) -> None:
        """Fetch and commit chunks up to ``target``.

        Pipelined: while one chunk is committed to the database, the next is fetched in a
        worker thread (the link to the previous block hash is known as soon as a chunk is
        fetched). A chunk that does not link is a reorg: nothing is prefetched past it.
        """
        width = self._chunk_width()
        if self.progress is not None:
            self.progress(self.cursor, target)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-prefetch") as worker:
            pending: Future[Chunk] | None = None
            while self.cursor < target:
                first, last = self.cursor + 1, min(target, self.cursor + width)
                if pending is None:  # its start: the last chunk committed, if it still links
                    pending = worker.submit(
                        self._fetch, first, last, self.cursor_hash, self.balance is None,
                        self._carried(),
                    )  # fmt: skip
                try:
                    chunk = pending.result()
                    pending = None
                    chunk, events = self._guarded(chunk) if chunk.linked else (chunk, [])
                except sources.ChainMoved as exc:
                    self.log.warning("scan.chain_moved", first=first, last=last, reason=str(exc))
                    self.incomplete = f"poll incomplete at blocks {first}..{last}: {exc}"
                    return  # the next poll sees where the chain settled; not a healthy poll
                if not chunk.linked:
                    if self.counts["reorgs"] >= MAX_REORGS_PER_POLL:
                        raise WatcherError(f"chain {self.chain.name}: the chain keeps reorganising")
                    self._reorg(chunk.last)
                    continue
                if chunk.last < target:
                    nxt = min(target, chunk.last + width)
                    needs_balance = not self.chain.balance_guard or chunk.balance_after is None
                    pending = worker.submit(  # its start: this chunk's end (balances, nonce)
                        self._fetch,
                        chunk.last + 1,
                        nxt,
                        chunk.blocks[-1].hash,
                        needs_balance,
                        chunk,
                    )
                try:
                    self._commit(chunk, events)
                except BaseException:
                    if pending is not None:
                        pending.cancel()
                    raise
                if self.progress is not None:
                    self.progress(self.cursor, target)

    def _fetch(
        self, first: int, last: int, parent_hash: str | None, balance_before: bool,
        start: Chunk | None = None, *,
        points: Mapping[int, tuple[int, int]] | None = None,
    ) -> Chunk:  # fmt: skip
        """Read ``first..last``; the chunk ending at the head takes the head's header read by
        ``_head`` (proven in the range's batch, see ``sources.fetch_chunk``)."""
        at_head = last == self.head_number
        top = max(self.head_number, last) - self.chain.reorg_depth  # the reorg window's floor
        return sources.fetch_chunk(
            self.pool, self.chain, first, last, self.sizers,
            parent_hash=parent_hash, balance_before=balance_before, native=self.native,
            start=start, points=points, window=max(top, self.final_at_start),
            head_header=self.head_header if at_head else None,
        )  # fmt: skip

    def _commit(self, chunk: Chunk, events: list[GuardEvent]) -> None:
        """The chunk's transfers, block hashes, balance, guard events and the cursor, handed to
        the ledger as one unit (``Findings``)."""
        chain, last = self.chain, chunk.blocks[-1]
        balance = chunk.balance_after if chain.balance_guard else self.balance
        hashes, forget_up_to = self._window(chunk)
        findings = Findings(
            first=chunk.first,
            last=chunk.last,
            inflows=tuple(chunk.inflows),
            times=block_times(chunk),
            hashes=hashes,
            forget_up_to=forget_up_to,
            cursor_hash=last.hash,
            cursor_time=block_time(last.timestamp),
            balance=balance,
            events=tuple(events),
            # Read in this poll from blocks already final when it began: these came from the
            # final chain itself (logs, receipts checked for status), so re-reading their
            # receipts later would prove nothing new. They become final in the same unit,
            # unless a second provider must confirm each receipt (cross_check).
            final_at_once=None if chain.cross_check else self.final_at_start,
        )
        result = self.ledger.commit_chunk(findings)
        self._moved(chunk.last, last.hash, balance)
        self._carry(chunk)
        self.counts["found"] += result.found
        self.counts["finalized"] += result.finalized
        self.log.info("scan.chunk", first=chunk.first, last=chunk.last, found=result.found)

    def _window(self, chunk: Chunk) -> tuple[tuple[sources.Block, ...], int]:
        """The chunk's block hashes to keep, and up to which number older ones are dropped.

        ``chunk.blocks`` is sparse (boundary headers and blocks with inflows), so the window of
        the last ``reorg_depth`` blocks keeps one more hash below it, the anchor: a reorg up to
        ``reorg_depth`` deep always finds a common block at or above the anchor.
        """
        floor = chunk.last - self.chain.reorg_depth
        below = [b for b in chunk.blocks if b.number <= floor]
        if below:
            return tuple(chunk.blocks[len(below) - 1 :]), below[-1].number - 1
        older = [n for n in self.ledger.stored_hashes(floor) if n <= floor]
        return tuple(chunk.blocks), (max(older) - 1 if older else floor)

    # -- balance guard -----------------------------------------------------------------------

    def _guarded(self, chunk: Chunk) -> tuple[Chunk, list[GuardEvent]]:
        """The chunk to commit and its ``watcher.unexplained_balance`` events (key, body).

        Growth the found inflows do not explain first rescans the chunk (from the next URL
        when there are several): a backend that answered ``eth_getLogs`` with ``[]`` for blocks
        it did not have yet then gives the payments. Still unexplained: one event per asset.
        """
        chain, sizer = self.chain, self.sizers["eth_getLogs"]
        native_before = self.balance if self.balance is not None else chunk.balance_before
        if chain.balance_guard and (native_before is None or chunk.balance_after is None):
            self.log.warning("scan.balance_unavailable", first=chunk.first, last=chunk.last)
        found = guards.unexplained(self.pool, chain, chunk, native_before, sizer)
        if not found:
            return chunk, []
        self.log.warning("scan.balance_rescan", first=chunk.first, last=chunk.last,
                         assets=[u.asset for u in found])  # fmt: skip
        parent = chunk.parent_hash
        moved = self.pool.fail_over("balance growth not explained: rescanning from another URL")

        def rescan() -> Chunk:  # everything read again, but not the bisection already done
            return self._fetch(chunk.first, chunk.last, parent, True, points=chunk.points)

        try:
            again = rescan()
        except RpcError:
            if not moved:
                raise
            self.pool.fail_over("the other URL could not give the rescan")  # e.g. it lags
            again = rescan()
        if not again.linked or again.blocks[-1].hash != chunk.blocks[-1].hash:
            raise sources.ChainMoved(f"blocks {chunk.first}..{chunk.last} changed on a rescan")
        native_before = self.balance if self.balance is not None else again.balance_before
        found = guards.unexplained(self.pool, chain, again, native_before, sizer)
        events: list[GuardEvent] = []
        for u in found:
            block: int | None = None
            key = f"watcher.unexplained_balance:{chain.name}:{again.first}:{again.last}"
            if u.token_address is None:
                try:
                    block = sources.locate_jump(
                        self.pool,
                        chain.receiving_address,
                        again.first,
                        again.last,
                        u.before,
                        again.explained,
                        {n: p[0] for n, p in again.points.items()},  # bisection's balances
                    )
                except RpcError as exc:
                    self.log.warning("scan.balance_locate_failed", reason=str(exc))
            else:
                key += f":{u.token_address}"
            data = guards.event_data(chain, again, u, block)
            log.warning("scan.unexplained_balance", **data)
            events.append(GuardEvent("watcher.unexplained_balance", key, data))
        self.counts["unexplained"] += len(events)
        return again, events
