"""Operating guards on a real SQLite file and a real Anvil node: one process at a time scans
and delivers, a halted chain resumes only on an acknowledged violation, health tells the truth.

Helpers come from ``test_daemon`` (configs, databases, the daemon as a child process).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_daemon import (
    Db,
    cli,
    daemons,
    dbs,
    dead_url,
    open_db,
    wait_for_heartbeat,
    write_config,
)
from tests.support.anvil import AnvilNode
from tests.support.service import DaemonProcess
from watcher.daemon import Daemon, DaemonLocked, FileLock, command_lock

__all__ = ["daemons", "dbs"]  # fixtures used here


# --- trap 5: tick and scan take the daemon's lock -----------------------------------------------


@pytest.mark.anvil
def test_tick_and_scan_beside_a_running_daemon_exit_one_naming_its_pid(
    anvil: AnvilNode,
    tmp_path: Path,
    dbs: Callable[[Path], Db],
    daemons: Callable[[Path], DaemonProcess],
) -> None:
    """A cron `tick` or a `scan` while `run` works on the same database is refused with exit 1
    and one line naming the daemon's pid, and the daemon keeps running."""
    assert anvil.url is not None
    config = write_config(tmp_path, {"local": anvil.url})
    db = dbs(config)
    daemon = daemons(config)
    wait_for_heartbeat(db, daemon)
    for command in ("tick", "scan"):
        result = cli(config, command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("proofwatch: error: another proofwatch daemon"), lines
        assert f"pid {daemon.pid}" in lines[0]
        assert result.stdout == ""
    assert daemon.alive()
    assert daemon.stop() == 0


def test_a_daemon_is_refused_while_a_tick_holds_the_lock_and_names_it(tmp_path: Path) -> None:
    """While a one-off `tick` holds the lock, a daemon (or a `scan`) is refused naming the
    tick and its pid; once it is released the lock is free again."""
    db = open_db(write_config(tmp_path, {"local": dead_url()}))
    try:
        with command_lock(db.settings, db.engine, db.now, "tick"):
            lock_file = tmp_path / "watcher.db.lock"
            assert lock_file.read_text().split()[1] == "tick"
            with pytest.raises(DaemonLocked, match=r"proofwatch `tick` \(pid \d+\) is already"):
                Daemon(db.context(), install_signals=False).start()
            with (
                pytest.raises(DaemonLocked, match=r"`tick` \(pid \d+\)"),
                command_lock(db.settings, db.engine, db.now, "scan"),
            ):
                pass
        second = FileLock(tmp_path / "watcher.db.lock", pid=7, role="scan")
        second.acquire()
        second.release()
    finally:
        db.engine.dispose()
        db.reader.dispose()


def test_tick_exits_one_when_another_tick_holds_the_lock(
    tmp_path: Path, dbs: Callable[[Path], Db]
) -> None:
    """A second `tick` started while one runs is refused (exit 1) and writes nothing."""
    config = write_config(tmp_path, {"local": dead_url()})
    db = dbs(config)
    with command_lock(db.settings, db.engine, db.now, "tick"):
        result = cli(config, "tick", "--json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "`tick` (pid" in result.stderr
    assert db.document()["chains"][0]["last_poll_at"] is None  # nothing was polled
    assert json.loads(cli(config, "status", "--json").stdout)["daemon"]["running"] is False
