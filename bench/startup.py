"""Start-up time of the read commands (issue 11 item 5), as whole processes.

Run: ``.venv/bin/python bench/startup.py [--runs 10] [--compare DIR]``.

Writes a minimal config and an initialised SQLite database to a temporary directory (with
``--database postgresql``: a database on a PostgreSQL server started for the run), then runs
``python -m watcher status --json``, ``invoice list --json`` and ``proof INV-1`` (exit 2: no
such invoice; it still pays the whole start-up) ``--runs`` times each and prints the median
wall time, and which of web3 / apprise / SQLAlchemy each command imported (``-X importtime``).
With ``--compare DIR`` (another checkout of the project, e.g. ``git worktree add /tmp/before
<commit>``) the same commands run from DIR too, interleaved run by run with this checkout so
that both see the same machine load. Each tree's ``watcher`` package is byte-compiled first
(``compileall``), as an installed package is: otherwise, under ``PYTHONDONTWRITEBYTECODE``,
every changed module would be compiled again in every run. As references it times a bare
interpreter, and one that imports only what every command is built on: Typer and the
settings (pydantic): the least a command can cost while it parses its arguments with Typer
and checks the whole config with pydantic. Nothing is asserted: it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (("status", "--json"), ("invoice", "list", "--json"), ("proof", "INV-1"))
HEAVY = ("web3", "apprise", "sqlalchemy")
REFERENCES = ("pass", "import typer, watcher.settings")
CONFIG = """\
[database]
url = "sqlite:///watcher.db"

[[chains]]
name = "local"
chain_id = 31337
rpc_urls = ["http://127.0.0.1:9"]
receiving_address = "0xB3e9568A9cbB624403743340358c85CCce130893"
"""


def run(tree: Path, config: Path, args: tuple[str, ...], *, importtime: bool = False) -> tuple[
    float, str
]:  # fmt: skip
    """Wall seconds of ``python -m watcher ARGS`` run from ``tree``, and its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHER_NOW", "WATCHER_CONFIG")}
    flags = ["-X", "importtime"] if importtime else []
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-m", "watcher", *args, "--config", str(config)],
        cwd=tree,  # `-m` puts the cwd first on sys.path: this tree's `watcher` is imported
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - started, done.stderr


def imported(stderr: str) -> list[str]:
    """Which of HEAVY an ``-X importtime`` stderr shows imported."""
    names = {line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if "|" in line}
    return [h for h in HEAVY if h in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another checkout to time")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: start a PostgreSQL server for the run (tests/support/postgres.py)",
    )
    args = parser.parse_args(argv)
    server = None
    if args.database == "postgresql":
        sys.path.insert(0, str(REPO))
        from tests.support.postgres import PostgresServer

        server = PostgresServer().start()
    try:
        url = server.url(server.create_database()) if server else "sqlite:///watcher.db"
        return _bench(args, url)
    finally:
        if server is not None:
            server.stop()


def _bench(args: argparse.Namespace, url: str) -> int:
    """Time every command (and the references) on a fresh database at ``url``."""
    trees = {"this": REPO}
    if args.compare:
        trees["compare"] = args.compare.resolve()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"start-up of read commands on {args.database}, {args.runs} runs each, median (load {load})"
    )
    for tree in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", "watcher"], cwd=tree, check=True)
    with tempfile.TemporaryDirectory(prefix="pw-startup-") as tmp:
        config = Path(tmp) / "watcher.toml"
        config.write_text(CONFIG.replace("sqlite:///watcher.db", url))
        subprocess.run(
            [sys.executable, "-m", "watcher", "init", "--config", str(config)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        for command in COMMANDS:
            times: dict[str, list[float]] = {name: [] for name in trees}
            for _ in range(args.runs):
                for name, tree in trees.items():
                    times[name].append(run(tree, config, command)[0])
            for name, tree in trees.items():
                heavy = imported(run(tree, config, command, importtime=True)[1])
                median = statistics.median(times[name])
                print(
                    f"  {' '.join(command):20} {name:8} median {median:.3f} s "
                    f"(min {min(times[name]):.3f}, max {max(times[name]):.3f}); "
                    f"imports {', '.join(heavy) or 'none of ' + '/'.join(HEAVY)}  [{tree}]"
                )
        for reference in REFERENCES:
            spent: list[float] = []
            for _ in range(args.runs):
                started = time.perf_counter()
                subprocess.run([sys.executable, "-c", reference], cwd=REPO, check=True)
                spent.append(time.perf_counter() - started)
            print(
                f"  reference: python -c {reference!r}: median {statistics.median(spent):.3f} s "
                f"(min {min(spent):.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
