"""Use cases that sequence I/O around the domain: scan, settle, renew, deliver, tick.

One ``Watcher`` per configuration and process: it keeps one RPC pool per chain and the
token decimals read on chain, and hands the settlement hooks to the scanner so inflows,
allocations, proofs, cycles and their events commit in the scanner's transactions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from watcher.chain.online import make_pool, read_decimals
from watcher.chain.rpc import RpcPool
from watcher.errors import WatcherError
from watcher.ledger import token_decimals
from watcher.ledger.context import Context
from watcher.ledger.scanning import ScanReport, scan_chain
from watcher.ledger.settlement import Settlement
from watcher.settings import ChainSettings
from watcher.store.db import read_session, transaction

if TYPE_CHECKING:  # delivery imports apprise, renewals invoicing: loaded by the rounds, not `scan`
    from watcher.ledger.renewals import RenewalReport
    from watcher.notify.outbox import Channel, DeliveryReport

log = structlog.get_logger("watcher.service")

Progress = Callable[[int, int], None]


@dataclass
class TickReport:
    scans: dict[str, ScanReport | str] = field(default_factory=dict)  # chain -> report or error
    renewals: RenewalReport | None = None
    delivery: DeliveryReport | None = None

    @property
    def failed_chains(self) -> list[str]:
        return [name for name, r in self.scans.items() if isinstance(r, str)]


class Watcher:
    """The application for one configuration: pools, settlement hooks, the scheduled rounds."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._pools: dict[str, RpcPool] = {}
        self._decimals: dict[tuple[str, str], int] = {}
        self._channels: list[Channel] | None = None
        self.settlement = Settlement(ctx.settings, ctx.now, token_decimals=self.token_decimals)

    def pool(self, chain: ChainSettings) -> RpcPool:
        if chain.name not in self._pools:
            self._pools[chain.name] = make_pool(chain)
        return self._pools[chain.name]

    def token_decimals(self, chain_name: str, token: str) -> int | None:
        """``decimals()`` read on chain once per process; None if the node cannot say."""
        key = (chain_name, token)
        if key not in self._decimals:
            try:
                self._decimals[key] = read_decimals(
                    self.pool(self.ctx.settings.chain(chain_name)), token
                )
            except WatcherError as exc:
                log.warning(
                    "token.decimals_unavailable", chain=chain_name, token=token, error=str(exc)
                )
                return None
        return self._decimals[key]

    def check_decimals(self, chain: ChainSettings) -> None:
        """Read and store ``decimals()`` of the chain's tokens never read before (a failure
        fails the poll: nothing of that chain is counted unverified), and raise the mismatch
        alert for any whose configured decimals disagree. Idle, it is one database read."""
        with read_session(self.ctx.engine) as session:
            todo = token_decimals.missing(session, chain)
            wrong = any(
                token_decimals.mismatch(session, self.ctx.settings, chain.name, t.address)
                for t in chain.tokens
            )
        if not todo and not wrong:
            return
        values = {token: read_decimals(self.pool(chain), token) for token in todo}
        with transaction(self.ctx.engine) as session:
            token_decimals.ensure(session, chain, values, self.ctx.now())

    def scan(
        self,
        chain: ChainSettings,
        *,
        from_block: int | None = None,
        to_block: int | None = None,
        progress: Progress | None = None,
    ) -> ScanReport:
        """Scan one chain up to its head (or ``to_block``), settling what became final.
        Tokens whose decimals were never read are read first (``watcher.ledger.token_decimals``)."""
        self.check_decimals(chain)
        return scan_chain(
            chain,
            self.pool(chain),
            self.ctx.engine,
            self.ctx.now,
            hooks=self.settlement,
            from_block=from_block,
            to_block=to_block,
            progress=progress,
        )

    def renew(self) -> RenewalReport:
        from watcher.ledger.renewals import run_renewals

        return run_renewals(self.ctx.engine, self.ctx.settings, self.ctx.now())

    def deliver(self) -> DeliveryReport:
        from watcher.notify.outbox import build_channels, deliver_due

        if self._channels is None:
            self._channels = build_channels(self.ctx.settings)
        return deliver_due(
            self.ctx.engine, self.ctx.settings, self.ctx.now, channels=self._channels
        )

    def tick(self) -> TickReport:
        """One round of every scheduled job; a failing chain does not stop the others."""
        report = TickReport()
        for chain in self.ctx.settings.chains:
            try:
                report.scans[chain.name] = self.scan(chain)
            except WatcherError as exc:
                log.error("scan.failed", chain=chain.name, error=str(exc))
                report.scans[chain.name] = str(exc)
        report.renewals = self.renew()
        report.delivery = self.deliver()
        return report
