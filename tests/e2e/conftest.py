"""Run the real `python -m watcher` in a subprocess against a temporary config and database.

No chain is needed: the ledger commands never connect, so rpc_urls point at a closed port
(``invoice issue`` would read a token's decimals on chain once, so the templates store USDC's
as if it had been read).
Templates (config only; plus retainers; plus invoices) are built once per session and store
(a SQLite file beside the config, or a PostgreSQL database on the session's test server), and
every case runs on its own copy of one (a file copy, or ``CREATE DATABASE ... TEMPLATE``).
Each command is a fresh interpreter that spends most of its time importing, so independent
cases run side by side (``run_all``).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.chain_harness import (  # noqa: F401  (the Anvil modules' fixtures)
    chain,
    module_store,
    template,
    ws,
)
from tests.e2e.daemon_harness import site  # noqa: F401  (the daemon modules' fixture)
from tests.support.postgres import PostgresServer
from tests.support.stores import dump_rows, dump_schema
from watcher.ledger import invoices as ledger
from watcher.ledger import token_decimals
from watcher.ledger.context import Context
from watcher.settings import load_settings
from watcher.store.db import make_engine, migrate, transaction

NOW = "2026-01-31T10:00:00Z"
WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
PAYER = "0x52908400098527886E0F7030069857D2E4169EE7"

CONFIG = f"""\
[database]
url = "sqlite:///data/watcher.db"

[[chains]]
name = "base"
chain_id = 8453
rpc_urls = ["${{BASE_RPC_URL}}"]
receiving_address = "{WALLET}"
native_symbol = "ETH"

[[chains.tokens]]
symbol = "USDC"
address = "{USDC}"
decimals = 6

[billing]
due_days = 7
"""
DOTENV = "BASE_RPC_URL=http://127.0.0.1:9/v2/not-a-real-key\n"


SQLITE_URL = "sqlite:///data/watcher.db"
_COPYING = threading.Lock()


@dataclass
class Workspace:
    """A config dir (watcher.toml + .env) with its SQLite file under data/, or with ``pg``
    the PostgreSQL database ``dbname`` on that server."""

    root: Path
    pg: PostgresServer | None = None
    dbname: str | None = None

    @property
    def config(self) -> Path:
        return self.root / "watcher.toml"

    @property
    def db(self) -> Path:
        return self.root / "data" / "watcher.db"

    @property
    def url(self) -> str:
        """The database URL the config names."""
        if self.pg is None:
            return SQLITE_URL
        assert self.dbname is not None
        return self.pg.url(self.dbname)

    def has_database(self) -> bool:
        """Whether a database was created: the SQLite file exists, or the PostgreSQL
        database (which the test made empty) has tables."""
        if self.pg is None:
            return self.db.exists()
        return bool(dump_schema(self.url))

    def copy(self, where: Path) -> Workspace:
        """A private copy at ``where``: the directory, and on PostgreSQL a new database made
        from this one, named in the copy's config."""
        shutil.copytree(self.root, where)
        if self.pg is None:
            return Workspace(where)
        with _COPYING:  # one CREATE DATABASE at a time from the same template
            copy = Workspace(where, self.pg, self.pg.create_database(template=self.dbname))
        copy.config.write_text(copy.config.read_text().replace(self.url, copy.url))
        return copy

    def drop(self) -> None:
        if self.pg is not None and self.dbname is not None:
            self.pg.drop_database(self.dbname)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("WATCHER_", "PROOFWATCH_")) and k != "BASE_RPC_URL"
        }
        env.update({"WATCHER_NOW": NOW, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})
        env.update(extra)
        return env

    def run(
        self, *args: str, config: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`python -m watcher [--config <ws>/watcher.toml] ARGS...` with WATCHER_NOW fixed."""
        argv = [sys.executable, "-m", "watcher"]
        if config:
            argv += ["--config", str(self.config)]
        return subprocess.run(
            [*argv, *args],
            cwd=self.root,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def dump(self) -> list[str]:
        """Every row and schema statement of the SQLite file, as `iterdump` prints them (on
        PostgreSQL: every table's columns, every view's definition, every row)."""
        if self.pg is not None:
            return dump_schema(self.url) + dump_rows(self.url)
        conn = sqlite3.connect(self.db)
        try:
            return list(conn.iterdump())
        finally:
            conn.close()


def new_workspace(root: Path, pg: PostgresServer | None = None) -> Workspace:
    """A config dir; on ``pg`` with a new, empty database."""
    root.mkdir(parents=True, exist_ok=True)
    made = Workspace(root, pg, pg.create_database() if pg is not None else None)
    (root / "watcher.toml").write_text(CONFIG.replace(SQLITE_URL, made.url))
    (root / ".env").write_text(DOTENV)
    return made


def _build(root: Path, steps: Callable[[Context], None]) -> None:
    """Run ledger use cases in-process (the same code the commands call) at WATCHER_NOW."""
    settings = load_settings(root / "watcher.toml")
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        now = datetime.fromisoformat(NOW.replace("Z", "+00:00"))
        steps(Context(settings=settings, engine=engine, now=lambda: now))
    finally:
        engine.dispose()


def _seed(ctx: Context) -> None:
    with transaction(ctx.engine) as session:  # as the first scan or invoice issue would
        token_decimals.record(session, ctx.settings.chain("base"), USDC, 6, ctx.now())
    usdc = {"chain": "base", "asset": "USDC"}
    ledger.add_retainer(ctx, client="Draft Co", monthly="1500", payers=[PAYER], **usdc)
    ledger.add_retainer(ctx, client="Acme", monthly="2000", scope="Backend work", **usdc)
    ledger.approve_retainer(ctx, "RET-2", by="Alice Client")
    ledger.add_retainer(ctx, client="Ether Ltd", chain="base", asset="ETH", monthly="0.5")
    ledger.approve_retainer(ctx, "RET-3", by="Eve")


def _invoice(ctx: Context) -> None:
    ledger.issue_invoice(ctx, "RET-2")
    ledger.issue_invoice(ctx, "RET-3")
    ledger.issue_invoice(ctx, "RET-2", kind="sprint", amount="250.5")
    ledger.void_invoice(ctx, "INV-3")


class Templates:
    """The CLI templates of one store, built on first use: "bare" (config only, no database),
    "seeded" (RET-1 draft USDC 1500 with one payer; RET-2 approved USDC 2000; RET-3 approved
    ETH 0.5) and "invoiced" (plus INV-1, RET-2's first month; INV-2, RET-3's first month in
    ETH; INV-3, a voided RET-2 sprint of 250.5).

    The ledgers are built in-process with watcher.ledger.invoices to keep the suite fast; every
    one of these steps is also run as a real command by a test of its own.
    """

    def __init__(self, where: Path, pg: PostgresServer | None) -> None:
        self.where = where
        self.pg = pg
        self.built: dict[str, Workspace] = {}
        self.copies: list[Workspace] = []

    def __getitem__(self, name: str) -> Workspace:
        if name not in self.built:
            root = self.where / name / "ws"
            if name == "bare":
                self.built[name] = new_workspace(root, self.pg)
            elif name == "seeded":
                self.built[name] = new_workspace(root, self.pg)
                _build(root, _seed)
            elif name == "invoiced":
                self.built[name] = self["seeded"].copy(root)
                _build(root, _invoice)
            else:
                raise KeyError(name)
        return self.built[name]

    def copy(self, name: str, where: Path) -> Workspace:
        """A private copy of template ``name`` (dropped with the templates)."""
        copy = self[name].copy(where)
        self.copies.append(copy)
        return copy

    def drop(self) -> None:
        for made in [*self.copies, *self.built.values()]:
            made.drop()


@pytest.fixture(scope="session")
def template_sets(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Templates]]:
    """``of(store) -> Templates``: one set of CLI templates per store, for the session."""
    sets: dict[str, Templates] = {}

    def of(store: str) -> Templates:
        if store not in sets:
            pg = request.getfixturevalue("pg_server") if store == "postgresql" else None
            sets[store] = Templates(tmp_path_factory.mktemp(f"cli-{store}"), pg)
        return sets[store]

    yield of
    for templates in sets.values():
        templates.drop()


@pytest.fixture(scope="module")
def templates(
    template_sets: Callable[[str], Templates],
    module_store: str,  # noqa: F811  (the fixture imported above)
) -> Templates:
    """The CLI templates on the module's store (see ``pytest_generate_tests``)."""
    return template_sets(module_store)


@dataclass(frozen=True)
class Run:
    """Commands on a private copy of a template; ``{root}`` in args/env is the copy's dir."""

    template: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # extra environment variables
    prepare: Callable[[Workspace], None] | None = None  # e.g. break the config first
    config: bool = True  # pass --config <copy>/watcher.toml before the args
    then: tuple[tuple[str, ...], ...] = ()  # further commands, in order, on the same copy


@dataclass(frozen=True, kw_only=True)
class Refusal(Run):
    """A command that must fail: its exit code, what the one stderr line names, what it hides."""

    code: int
    names: tuple[str, ...]
    hidden: tuple[str, ...] = ()  # none may appear anywhere in stdout or stderr


@dataclass(frozen=True)
class Outcome:
    """What a Run produced, with the database dumped before and after (None: no database)."""

    ws: Workspace
    results: list[subprocess.CompletedProcess[str]]  # one per command: args, then each `then`
    before: list[str] | None
    after: list[str] | None

    @property
    def result(self) -> subprocess.CompletedProcess[str]:
        """The result of the first (for most runs: the only) command."""
        return self.results[0]

    def stdout(self, step: int = 0) -> str:
        """The stdout of command ``step``, which must have exited 0 with nothing on stderr."""
        result = self.results[step]
        assert result.returncode == 0, (result.args, result.returncode, result.stderr)
        assert result.stderr == "", result.stderr
        return result.stdout

    def json(self, step: int = 0) -> Any:
        """The one JSON document command ``step`` printed."""
        return json.loads(self.stdout(step))


def run_all(runs: dict[str, Run], templates: Templates, tmp: Path) -> dict[str, Outcome]:
    """Run every case on its own copy of its template, several cases at a time.

    Each command is a fresh interpreter that spends most of its time importing, so running
    them side by side keeps the suite fast without sharing any state between cases.
    """

    def one(name: str, run: Run) -> tuple[str, Outcome]:
        case = templates.copy(run.template, tmp / name / "ws")
        if run.prepare is not None:
            run.prepare(case)

        def fill(text: str) -> str:
            return text.replace("{root}", str(case.root))

        before = case.dump() if case.has_database() else None
        env = case.env(**{k: fill(v) for k, v in run.env})
        results = [
            case.run(*map(fill, args), config=run.config, env=env) for args in (run.args, *run.then)
        ]
        after = case.dump() if case.has_database() else None
        return name, Outcome(case, results, before, after)

    for name in {run.template for run in runs.values()}:
        templates[name]  # build them before the threads start
    # The longest chains first, so that they do not end up running alone at the end.
    ordered = sorted(runs.items(), key=lambda item: -len(item[1].then))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(lambda item: one(*item), ordered))


def assert_refused(outcome: Outcome, case: Refusal) -> str:
    """The exit code, ONE stderr line naming the values, no traceback, nothing written."""
    result = outcome.result
    assert result.returncode == case.code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("proofwatch: error: "), line
    for name in case.names:
        assert name in line, (name, line)
    for secret in case.hidden:
        assert secret not in result.stderr + result.stdout
    assert result.stdout == ""
    assert outcome.before is not None
    assert outcome.after == outcome.before, "the database changed"
    return line


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``STORES`` (e.g. ``STORES = ("sqlite", "postgresql")``) runs its
    workspace tests once per store; the others run on SQLite only."""
    if "module_store" in metafunc.fixturenames:
        stores = getattr(metafunc.module, "STORES", ("sqlite",))
        metafunc.parametrize("module_store", stores, indirect=True, scope="module")
