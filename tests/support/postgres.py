"""Run a real PostgreSQL server for tests (Debian's ``postgresql`` package, no Docker, no mock).

``initdb`` into a temporary directory, then ``pg_ctl start`` on a free port on 127.0.0.1 with
the unix socket in that directory too. The server refuses to run as root, and CI runs as root:
then every server command runs as the ``postgres`` user through ``runuser -u postgres --`` and
the directory is handed to that user; otherwise the commands run directly. TCP connections
need a password (scram), so the URLs the tests use carry a real secret to redact.

One server per test session (see ``pg_server`` in tests/conftest.py); each test gets its own
database (``CREATE DATABASE``, optionally from a template). Every server started is stopped:
by its owner, or at the latest by the ``atexit`` hook. A missing binary is an error, not a
skip (``make test`` installs the package).
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

from tests.support.anvil import free_port
from tests.support.service import Service

PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT = 30
STOP_TIMEOUT = 30
USER = "postgres"

#: The stores a parametrized suite runs on (``db_url`` in tests/conftest.py).
STORES = ("sqlite", "postgresql")

# Started and not yet stopped (strong references, so the atexit hook can still reach them).
_live_servers: set[PostgresServer] = set()


def pg_bin_dir() -> Path:
    """The server's bin directory: ``$PG_BIN`` if set, else the newest /usr/lib/postgresql/N/bin."""
    if os.environ.get("PG_BIN"):
        path = Path(os.environ["PG_BIN"])
    else:
        found = sorted(
            (p for p in PG_ROOT.glob("*/bin") if p.name == "bin" and p.parent.name.isdigit()),
            key=lambda p: int(p.parent.name),
        )
        path = found[-1] if found else PG_ROOT / "15/bin"
    if not (path / "initdb").is_file() or not (path / "pg_ctl").is_file():
        raise RuntimeError(f"PostgreSQL server binaries not found in {path}: run `make pg`")
    return path


def _as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer(Service):
    """One PostgreSQL server in a temporary directory; ``start()``/``stop()`` or ``with``."""

    def __init__(self, *, settings: Sequence[str] = ()) -> None:
        # Durability is not what the tests check: skip fsync so CREATE DATABASE is quick.
        self.settings = [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=200",
            *settings,
        ]
        self.password = "pw-" + secrets.token_hex(8)
        self.root: Path | None = None
        self.port: int | None = None
        self.bin: Path | None = None
        self._names = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None and self.root is not None
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if _as_root():
            cmd = ["runuser", "-u", USER, "--", *cmd]
        return subprocess.run(
            cmd,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def start(self) -> PostgresServer:
        """initdb, then start the server and wait until it accepts connections; returns self."""
        if self.root is not None:
            raise RuntimeError("PostgresServer already started")
        self.bin = pg_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        _live_servers.add(self)
        try:
            if _as_root():
                shutil.chown(self.root, USER, USER)
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            if _as_root():
                shutil.chown(pwfile, USER, USER)
            done = self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            pwfile.unlink()
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
            # Another process may grab the port between free_port() and the bind: retry.
            for attempt in range(3):
                if self._launch(free_port()):
                    return self
                tail = self.log_tail()
                if "already in use" not in tail or attempt == 2:
                    raise RuntimeError(f"postgres did not start on port {self.port}:\n{tail}")
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch(self, port: int) -> bool:
        """``pg_ctl start -w`` on ``port``; True once the server accepts connections."""
        self.port = port
        options = " ".join(
            [f"-p {port}", "-h 127.0.0.1", f"-k {self.root}"] + [f"-c {s}" for s in self.settings]
        )
        done = self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            timeout=START_TIMEOUT + 5,
        )
        return done.returncode == 0

    def stop(self) -> None:
        """Stop the server (fast shutdown, then immediate) and delete its directory."""
        if self.root is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            done = self._run(
                "pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir), timeout=STOP_TIMEOUT
            )
            if done.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data_dir))
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        _live_servers.discard(self)

    @property
    def running(self) -> bool:
        return self.root is not None and (self.data_dir / "postmaster.pid").exists()

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server log (empty once stopped)."""
        if self.root is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- databases -------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, driver: str = "postgresql+psycopg") -> str:
        """The SQLAlchemy URL of ``dbname`` over TCP, password included."""
        if self.port is None:
            raise RuntimeError("PostgresServer is not started")
        return f"{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A plain psycopg connection in autocommit mode (for CREATE/DROP DATABASE)."""
        return psycopg.connect(self.url(dbname, driver="postgresql"), autocommit=True)

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a new empty database (or a copy of ``template``); returns its name."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        sql = f'CREATE DATABASE "{name}"'
        if template:
            sql += f' TEMPLATE "{template}"'
        with self.connect() as conn:
            conn.execute(sql)  # type: ignore[arg-type]
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing any connection a test left open to it (nothing to do once the
        server is stopped: its databases went with its directory)."""
        if not self.running:
            return
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_live_servers):
        server.stop()
