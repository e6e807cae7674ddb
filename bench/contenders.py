"""The contenders of ``bench/scan.py``'s cost section, each run against the counting proxy.

- ``Proofwatch``: a config + SQLite in its own directory; ``scan()`` runs ``python -m watcher
  scan --json`` as a whole process (start-up included); ``poller()`` gives an in-process
  ``Watcher`` on the same database for the steady-state polls.
- ``ethereum_etl``: ethereum-etl 2.4.2 from its own virtualenv (``.venv-etl``, ``make
  .venv-etl``): ``export_blocks_and_transactions`` then ``export_token_transfers`` over the
  range, as two whole processes; what it found is read back from its CSV files.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, func, select

from bench.cost import Meter, Tally
from watcher.ledger.context import Context
from watcher.runtime.service import Watcher
from watcher.settings import ChainSettings, load_settings
from watcher.store.db import make_engine, read_session
from watcher.store.tables import OutboxEvent, Transfer

REPO = Path(__file__).resolve().parents[1]
ETL = REPO / ".venv-etl" / "bin" / "ethereumetl"

CONFIG = """\
[database]
url = "sqlite:///watcher.db"

[[chains]]
name = "anvil"
chain_id = 31337
rpc_urls = ["{url}"]
receiving_address = "{wallet}"
finality = "finalized"
poll_seconds = 2
start_block = 0
native_symbol = "ETH"
internal = "{internal}"
max_trace_range = 300  # Anvil's stated trace_filter limit, as an operator sets a provider's
balance_guard = true
"""
TOKEN = """
[[chains.tokens]]
symbol = "{symbol}"
address = "{address}"
decimals = {decimals}
"""


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}


_compiled = False


def compile_watcher() -> None:
    """Write the bytecode of ``watcher/`` once, as installing the package does: without it
    an environment with ``PYTHONDONTWRITEBYTECODE`` set makes every timed ``proofwatch scan``
    compile its own modules from source (about 60 ms here), which no installed copy does."""
    global _compiled
    if _compiled:
        return
    env = {k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "watcher")],
        env=env, capture_output=True, check=True,
    )  # fmt: skip
    _compiled = True


class Proofwatch:
    """One proofwatch installation (config + database) watching the wallet through ``url``."""

    def __init__(
        self,
        root: Path,
        url: str,
        wallet: str,
        tokens: dict[str, tuple[str, int]],
        internal: str,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.internal = root, internal
        self.config = root / "watcher.toml"
        text = CONFIG.format(url=url, wallet=wallet, internal=internal)
        for symbol, (address, decimals) in tokens.items():
            text += TOKEN.format(symbol=symbol, address=address, decimals=decimals)
        self.config.write_text(text)
        compile_watcher()
        self._run("init")
        self._watcher: Watcher | None = None
        self._engine: Any = None

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "watcher", *args, "--config", str(self.config)],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench: proofwatch {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done

    def scan(self, meter: Meter, label: str) -> Tally:
        """``proofwatch scan`` as a whole process, timed and counted."""
        meter.start()
        done = self._run("scan", "--chain", "anvil", "--json")
        tally = meter.stop(label)
        report = json.loads(done.stdout)["anvil"]
        tally.found = self.stored()
        tally.notes.append(
            f"report: found={report['found']} finalized={report['finalized']} "
            f"unexplained={report['unexplained']} cursor={report['cursor_after']}"
        )
        self.last_report = report
        return tally

    def _db(self) -> Any:
        if self._engine is None:
            settings = load_settings(self.config)
            self._engine = make_engine(settings.database_url)
        return self._engine

    def stored(self) -> Counter[tuple[str, str, int]]:
        with read_session(self._db()) as session:
            rows = session.exec(select(Transfer).where(col(Transfer.status) != "orphaned")).all()
        return Counter((t.kind, t.tx_hash.lower(), int(t.amount)) for t in rows)

    def events(self, kind: str) -> int:
        with read_session(self._db()) as session:
            query = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.type == kind)
            return int(session.exec(query).one())

    def poller(self) -> Callable[[], Any]:
        """One in-process poll (``Watcher.scan``) of the chain on this database per call."""
        if self._watcher is None:
            settings = load_settings(self.config)
            ctx = Context(settings=settings, engine=self._db(), now=lambda: datetime.now(UTC))
            self._watcher = Watcher(ctx)
            self._chain: ChainSettings = settings.chain("anvil")
        watcher, chain = self._watcher, self._chain
        return lambda: watcher.scan(chain)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def ethereum_etl(
    meter: Meter, url: str, first: int, last: int, out: Path, wallet: str, tokens: Sequence[str]
) -> Tally | None:
    """ethereum-etl over ``first..last``; None when its virtualenv is missing."""
    if not ETL.exists():
        return None
    out.mkdir(parents=True, exist_ok=True)
    commands = [
        [
            str(ETL), "export_blocks_and_transactions", "--start-block", str(first),
            "--end-block", str(last), "--provider-uri", url,
            "--blocks-output", str(out / "blocks.csv"),
            "--transactions-output", str(out / "transactions.csv"),
        ],
        [
            str(ETL), "export_token_transfers", "--start-block", str(first),
            "--end-block", str(last), "--provider-uri", url, "--output", str(out / "tt.csv"),
        ],
    ]  # fmt: skip
    meter.start()
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench: ethereum-etl failed:\n{done.stderr[-3000:]}")
    tally = meter.stop("ethereum-etl 2.4.2 (blocks+txs, token transfers)")
    low, configured = wallet.lower(), {t.lower() for t in tokens}
    with (out / "transactions.csv").open() as f:
        for row in csv.DictReader(f):
            if (row["to_address"] or "").lower() == low and int(row["value"]) > 0:
                tally.found[("native", row["hash"].lower(), int(row["value"]))] += 1
    with (out / "tt.csv").open() as f:
        for row in csv.DictReader(f):
            if row["to_address"].lower() == low and row["token_address"].lower() in configured:
                tally.found[("erc20", row["transaction_hash"].lower(), int(row["value"]))] += 1
    return tally


def floor_process(
    meter: Meter, url: str, wallet: str, tokens: Sequence[str], first: int, last: int
) -> Tally:
    """``bench/floor.py`` as a whole process, timed and counted."""
    meter.start()
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "floor.py"), url, wallet, str(first), str(last),
         *tokens],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    tally = meter.stop("floor (bench/floor.py, whole process)")
    if done.returncode != 0:
        raise SystemExit(f"bench: the floor failed:\n{done.stderr[-3000:]}")
    for kind, tx, amount, n in json.loads(done.stdout):
        tally.found[(kind, tx, int(amount))] += n
    return tally


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
