"""The context every ledger use case runs in: settings, the database and the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from watcher.settings import Settings


@dataclass(frozen=True)
class Context:
    """What every use case needs: settings, the database, and the (injectable) clock."""

    settings: Settings
    engine: Engine
    now: Callable[[], datetime]
