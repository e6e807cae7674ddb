"""How often the daemon polls a chain: ``poll_seconds`` while it waits for money, else
``idle_poll_seconds``.

A chain is *busy* while it has an invoice waiting for a payment soon (``open``, ``pending``,
``underpaid``, ``needs_review``) or a transfer waiting for finality (``seen``); otherwise it is
*idle*. The scan job still runs every ``poll_seconds``; on an idle chain a run polls only when
the last completed poll began ``idle_poll_seconds`` ago (never more often than
``poll_seconds``). A poll reads every block since the cursor, so a slower idle pace delays
detection but loses nothing. An ``expired`` invoice is still payable (``paid_late``), but its
payment is not urgent: it does not keep the chain busy.

The pace is timed on a monotonic clock (injectable for tests), never on ``ctx.now``, which may
be a frozen ``$WATCHER_NOW``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import col, func, select

from watcher.domain.billing import InvoiceStatus
from watcher.settings import ChainSettings
from watcher.store.db import read_session
from watcher.store.tables import Invoice, Transfer

#: Invoices in these states keep their chain on ``poll_seconds``.
AWAITING = (
    InvoiceStatus.OPEN,
    InvoiceStatus.PENDING,
    InvoiceStatus.UNDERPAID,
    InvoiceStatus.NEEDS_REVIEW,
)


def chain_is_busy(engine: Engine, chain: ChainSettings) -> bool:
    """True when ``chain`` has an invoice awaiting payment or a transfer awaiting finality."""
    with read_session(engine) as session:
        invoice = select(func.count()).where(
            Invoice.chain == chain.name, col(Invoice.status).in_([s.value for s in AWAITING])
        )
        if session.exec(invoice).one():
            return True
        seen = select(func.count()).where(Transfer.chain == chain.name, Transfer.status == "seen")
        return bool(session.exec(seen).one())


class IdlePacer:
    """Decides, at each run of a chain's scan job, whether this run polls.

    ``due`` is asked before a poll; ``polled`` is told when a poll completed (reached the
    head). A chain whose last poll failed or stopped short is polled at every run, as before.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.skipped: Counter[str] = Counter()  # runs that did not poll, per chain
        self._last: dict[str, float] = {}  # when the last completed poll began, per chain
        self._lock = threading.Lock()

    def began(self) -> float:
        """The clock's reading when a poll begins (pass it to ``polled``)."""
        return self.clock()

    def due(self, chain: ChainSettings, busy: Callable[[], bool]) -> bool:
        """True when this run should poll ``chain``; ``busy`` is asked only when it matters."""
        with self._lock:
            last = self._last.get(chain.name)
        if last is None:
            return True
        interval = max(chain.idle_poll_seconds, chain.poll_seconds)
        # The job runs every poll_seconds, with jitter: half a period of slack keeps an idle
        # poll from slipping a whole period late.
        if self.clock() - last + chain.poll_seconds / 2 >= interval:
            return True
        if busy():
            return True
        with self._lock:
            self.skipped[chain.name] += 1
        return False

    def polled(self, chain: ChainSettings, began: float, *, complete: bool) -> None:
        """A poll that began at ``began`` ended; only a complete one sets the idle pace."""
        with self._lock:
            if complete:
                self._last[chain.name] = began
            else:
                self._last.pop(chain.name, None)
