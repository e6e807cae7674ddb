"""``proofwatch`` ends its process without the interpreter's teardown of every loaded module
(issue 11, the whole-process time of ``scan``), and that exit keeps what the teardown did: the
exit code, every line of output, ``atexit`` hooks, and the SQLite connections closed (no WAL
file left behind). The real program in a subprocess against a real Anvil node, entered as
``python -m watcher`` enters it, with a marker whose ``__del__`` runs only in that teardown."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.anvil import AnvilNode
from tests.support.one_chain import one_chain_config

REPO = Path(__file__).resolve().parents[2]

# ``python -m watcher ARGS`` with two markers: TEARDOWN is written when the interpreter frees
# this module's globals at exit, AT_EXIT by an ``atexit`` hook (which must still run).
ENTRY = """
import atexit, os, sys

class Marker:
    def __init__(self, fd):
        self.fd, self.write = fd, os.write  # held here: module globals are gone by then
    def __del__(self):
        self.write(self.fd, b"TEARDOWN\\n")

marker = Marker(sys.stderr.fileno())
atexit.register(os.write, sys.stderr.fileno(), b"AT_EXIT\\n")
sys.argv = ["proofwatch", *sys.argv[1:]]
from watcher.cli.app import main
main()
"""


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    with AnvilNode() as anvil:
        anvil.mine(3)
        yield anvil


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    return subprocess.run(
        [sys.executable, "-c", ENTRY, "--config", str(config), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_scan_exits_without_teardown_and_keeps_what_it_did(node: AnvilNode, tmp_path: Path) -> None:
    """A scan to the head exits 0 with its whole JSON report and log lines, runs the atexit
    hooks, closes the SQLite database (no WAL file left), and skips the module teardown."""
    assert node.url is not None
    config = one_chain_config(tmp_path, node.url, internal="trace_filter")
    assert run(config, "init").returncode == 0
    done = run(config, "scan", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("}") and '"cursor_after": 3' in done.stdout
    assert '"event": "scan.done"' in done.stderr
    assert "AT_EXIT" in done.stderr
    assert "TEARDOWN" not in done.stderr
    assert not (tmp_path / "watcher.db-wal").exists()
    again = run(config, "scan", "--json")  # the database is whole: the next scan reads it
    assert again.returncode == 0 and '"cursor_before": 3' in again.stdout


def test_a_profiled_run_still_writes_its_profile(tmp_path: Path) -> None:
    """Under ``python -m cProfile -o FILE -m watcher`` the process exits as the interpreter does,
    so the profiler writes its report (cProfile itself swallows the SystemExit: exit 0)."""
    config = one_chain_config(tmp_path, "http://127.0.0.1:9")  # nothing listens: never asked
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    profile = tmp_path / "scan.prof"
    profiled = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "watcher"]
    done = subprocess.run(
        [*profiled, "--config", str(config), "scan", "--from", "-1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "proofwatch: error: --from -1 must be a block number >= 0" in done.stderr
    assert profile.stat().st_size > 0


def test_error_exit_codes_and_messages_are_kept(tmp_path: Path) -> None:
    """Bad input still exits 2 with its one line, an uninitialised database 1, and the help
    of a bare ``proofwatch`` 2 (Typer's no-arguments help), all without the teardown."""
    config = one_chain_config(tmp_path, "http://127.0.0.1:9")  # nothing listens: never asked
    bad = run(config, "scan", "--from", "-1")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "proofwatch: error: --from -1 must be a block number >= 0\n" in bad.stderr
    missing = run(config, "scan")
    assert missing.returncode == 1
    assert "proofwatch: error: database is not initialised: run `proofwatch init`" in (
        missing.stderr
    )
    unknown = run(config, "nosuch")
    assert unknown.returncode == 2 and "No such command 'nosuch'" in unknown.stderr
    for done in (bad, missing, unknown):
        assert "AT_EXIT" in done.stderr and "TEARDOWN" not in done.stderr
