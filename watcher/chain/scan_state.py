"""What one poll of one chain keeps in memory: its cursor, balance and counts, and the ledger
that holds them between polls (``watcher.chain.port.ScanLedger``).

``ScanState`` is the base of the scanner (``watcher.chain.scanner``): it loads the chain's
position at the start of a poll, follows the cursor as chunks and rewinds are committed, and
records what the poll saw. ``watcher.chain.reorgs`` adds reorgs and finality on top of it.
"""

from __future__ import annotations

from collections.abc import Callable
from weakref import WeakKeyDictionary

import structlog

from watcher.chain.chunk import Chunk
from watcher.chain.findings import PollRecord
from watcher.chain.port import ScanLedger
from watcher.chain.rpc import RpcPool
from watcher.domain.finality import RangeSizer
from watcher.errors import FinalityViolation, RpcError, WatcherError
from watcher.redact import redact_text
from watcher.settings import ChainSettings

log = structlog.get_logger("watcher.chain.scanner")

# Range widths learned per pool (one pool per chain, living as long as the daemon).
_SIZERS: WeakKeyDictionary[RpcPool, dict[str, RangeSizer]] = WeakKeyDictionary()
# The last chunk committed per pool, with the chain and mode that read it: its end balances
# (native, nonce, guarded tokens) are the next poll's start while the cursor still links.
_CARRIED: WeakKeyDictionary[RpcPool, tuple[str, str, Chunk]] = WeakKeyDictionary()


class ScanState:
    """One poll's state of one chain; the ledger keeps it between polls."""

    native = True  # whether native inflows are read (``poll_chain``)

    def __init__(
        self,
        chain: ChainSettings,
        pool: RpcPool,
        ledger: ScanLedger,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.chain, self.pool, self.ledger, self.progress = chain, pool, ledger, progress
        self.log = log.bind(chain=chain.name)
        self.sizers = _SIZERS.setdefault(pool, {})
        widest = {"eth_getLogs": chain.max_log_range, "trace_filter": chain.trace_range}
        for method, width in widest.items():
            self.sizers.setdefault(method, RangeSizer(max(1, width)))
        self.cursor = -1
        self.cursor_hash: str | None = None
        self.balance: int | None = None
        self.final_at_start = -1  # the final block when this poll began
        self.final_seen = -1  # the highest final block seen so far: never moves backwards
        self.counts = {"found": 0, "orphaned": 0, "finalized": 0, "reorgs": 0, "unexplained": 0}
        self.incomplete: str | None = None  # why the poll stopped short of its target
        self.halted_by: str | None = None  # the violation that halts this chain
        self.resume_ack: str | None = None  # the violation the operator acknowledged

    def _load_state(self, from_block: int | None) -> None:
        position = self.ledger.load(from_block)
        self.cursor, self.cursor_hash = position.cursor, position.cursor_hash
        self.balance, self.final_seen = position.balance, position.final_seen
        self.halted_by, self.resume_ack = position.halted_by, position.resume_ack

    def _refuse_if_halted(self) -> None:
        """A chain halted by a finality violation is not polled until the operator resumes it."""
        if self.halted_by is not None:
            name = self.chain.name
            raise FinalityViolation(
                f"chain {name}: halted by finality violation {self.halted_by}; after looking "
                f"at it: proofwatch chain resume {name} --ack {self.halted_by}"
            )

    def _moved(self, cursor: int, cursor_hash: str | None, balance: int | None) -> None:
        """The ledger committed a new cursor: follow it."""
        self.cursor, self.cursor_hash, self.balance = cursor, cursor_hash, balance

    def _carry(self, chunk: Chunk) -> None:
        """Keep the committed ``chunk`` (the cursor's block is its last) for the next poll."""
        _CARRIED[self.pool] = (self.chain.name, self._mode(), chunk)

    def _carried(self) -> Chunk | None:
        """The last chunk committed through this pool when it ends at the cursor's block (same
        number and hash, same chain and mode): its end balances are this poll's start, not read
        again. None after a rewind, a reorg, another process moving the cursor, or a restart."""
        kept = _CARRIED.get(self.pool)
        if kept is None or self.cursor_hash is None:
            return None
        name, mode, chunk = kept
        same_mode = (name, mode) == (self.chain.name, self._mode())
        end = chunk.blocks[-1] if chunk.blocks else None
        if not same_mode or end is None or chunk.last != self.cursor or end.number != self.cursor:
            return None
        return chunk if end.hash.lower() == self.cursor_hash.lower() else None

    def _mode(self) -> str:
        return f"{self.chain.internal}:{self.native}"

    # -- chain state -------------------------------------------------------------------------

    def _record_lag(self, head: int) -> None:
        """A poll that read nothing because every URL is behind the cursor: the node answered
        (``rpc_ok``), but the chain has not been read, so ``last_ok_at`` stays where it was."""
        self.log.warning("scan.all_lagging", head=head, cursor=self.cursor)
        message = f"every RPC URL is behind the cursor (head {head}, cursor {self.cursor})"
        self.ledger.record_poll(PollRecord("lagging", message=message))

    def _record(self, *, head: int | None, final: int | None, error: WatcherError | None) -> None:
        """What this poll saw, in the chain's state; an error's message is redacted.

        A poll that stopped short of its target (``self.incomplete``) records the head but is
        not a successful poll: ``last_ok_at`` stays, the reason is the ``last_error``.
        """
        urls = self.chain.rpc_urls
        if error is not None:
            message = redact_text(str(error), urls)
            rpc_ok = not isinstance(error, RpcError)
            self.ledger.record_poll(PollRecord("failed", message=message, rpc_ok=rpc_ok))
            self.log.error("scan.failed", error=message, kind=type(error).__name__)
            return
        if self.incomplete is not None:
            message = redact_text(self.incomplete, urls)
            self.ledger.record_poll(PollRecord("incomplete", head, final, message))
        else:
            self.ledger.record_poll(PollRecord("ok", head, final))
        self.resume_ack = None  # a poll got through: the acknowledgement is spent
