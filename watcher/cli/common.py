"""What every command shares: the loaded context, JSON output, one-line errors.

Start-up matters for the read commands (issue 11): this module, and every command module at
import time, imports only Typer and the standard library. The settings, the store (SQLAlchemy,
SQLModel), the ledger and Rich are imported by the commands that use them, when they run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from watcher.errors import WatcherError

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy.engine import Engine

    from watcher.ledger.context import Context
    from watcher.settings import Settings
    from watcher.store.dbapi import Reader

T = TypeVar("T")


class _LazyConsole:
    """Rich's console, built on first use: commands that print JSON never import Rich.

    Stands in for the console in ``console.print(...)``; where Rich itself wants a
    ``Console`` (a progress bar), pass ``real_console()``."""

    _console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(real_console(), name)


def real_console() -> Console:
    """The one Rich console of the process (stdout, no highlighting)."""
    if _LazyConsole._console is None:
        from rich.console import Console

        _LazyConsole._console = Console(highlight=False)
    return _LazyConsole._console


console: Console = _LazyConsole()  # type: ignore[assignment]


@dataclass
class Globals:
    """Options given before or after the command name: ``--config``, ``--env-file``, ``--debug``."""

    config: Path | None = None
    env_file: Path | None = None
    debug: bool = False


GLOBALS = Globals()


def load() -> Settings:
    from watcher.settings import config_path_from_env, load_settings

    return load_settings(config_path_from_env(GLOBALS.config), GLOBALS.env_file)


def context(*, readonly: bool = False, check_schema: bool = True) -> Context:
    """Settings, an engine on the configured database, and the clock (``$WATCHER_NOW``)."""
    settings = load()
    return context_for(settings, readonly=readonly, check_schema=check_schema)


def context_for(
    settings: Settings, *, readonly: bool = False, check_schema: bool = True
) -> Context:
    """``context`` for settings already loaded."""
    from watcher.ledger.context import Context
    from watcher.settings import clock_from_env
    from watcher.store.db import database_exists, make_engine, require_schema

    if check_schema and not database_exists(settings.database_url):
        # before make_engine, which would leave an empty SQLite file behind
        raise WatcherError("database is not initialised: run `proofwatch init`")
    engine = make_engine(settings.database_url, readonly=readonly)
    if check_schema:
        require_schema(engine)
    return Context(settings=settings, engine=engine, now=clock_from_env())


def read(query: Callable[[Engine | Reader], T], settings: Settings | None = None) -> T:
    """``query`` on the configured database, read-only: through the DB-API reader
    (``watcher.store.dbapi``, no SQLAlchemy to import) when it can answer, else through an
    engine as ``context(readonly=True)`` gives it, which words every error as before."""
    from watcher.settings import clock_from_env
    from watcher.store.dbapi import Unanswered, open_reader

    settings = settings if settings is not None else load()
    try:
        with open_reader(settings.database_url) as reader:
            clock_from_env()  # a bad $WATCHER_NOW is refused here too, as by ``context``
            return query(reader)
    except Unanswered:
        pass
    return query(context_for(settings, readonly=True).engine)


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def fail(exc: WatcherError) -> int:
    message = " ".join(str(exc).split())
    sys.stderr.write(f"proofwatch: error: {message}\n")
    return exc.exit_code
