"""What every command shares: the loaded context, JSON output, one-line errors."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from watcher.errors import WatcherError
from watcher.ledger.context import Context
from watcher.settings import Settings, clock_from_env, config_path_from_env, load_settings
from watcher.store.db import database_exists, make_engine, require_schema

console = Console(highlight=False)


@dataclass
class Globals:
    """Options given before or after the command name: ``--config``, ``--env-file``, ``--debug``."""

    config: Path | None = None
    env_file: Path | None = None
    debug: bool = False


GLOBALS = Globals()


def load() -> Settings:
    return load_settings(config_path_from_env(GLOBALS.config), GLOBALS.env_file)


def context(*, readonly: bool = False, check_schema: bool = True) -> Context:
    """Settings, an engine on the configured database, and the clock (``$WATCHER_NOW``)."""
    settings = load()
    if check_schema and not database_exists(settings.database_url):
        # before make_engine, which would leave an empty SQLite file behind
        raise WatcherError("database is not initialised: run `proofwatch init`")
    engine = make_engine(settings.database_url, readonly=readonly)
    if check_schema:
        require_schema(engine)
    return Context(settings=settings, engine=engine, now=clock_from_env())


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def fail(exc: WatcherError) -> int:
    message = " ".join(str(exc).split())
    sys.stderr.write(f"proofwatch: error: {message}\n")
    return exc.exit_code
