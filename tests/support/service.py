"""Shared shapes of the test helpers: a start/stop service, and the daemon as a child process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

REPO_ROOT = Path(__file__).resolve().parents[2]


class Service:
    """Something with ``start() -> self`` and ``stop()`` that can be used with ``with``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DaemonProcess:
    """``python -m watcher run --config CONFIG`` as a child process, its stderr (the JSON log)
    in a file beside the config."""

    def __init__(self, config: Path, env: dict[str, str], *, stop_timeout: float = 30.0) -> None:
        self.stop_timeout = stop_timeout
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(config)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    stderr = log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float | None = None) -> int:
        """Send ``sig`` and wait for the exit code (killed, and an AssertionError, past the
        deadline)."""
        limit = self.stop_timeout if timeout is None else timeout
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"daemon did not exit within {limit:g} s of {sig.name}") from None

    def terminate(self) -> int:
        return self.stop(signal.SIGTERM)

    def kill9(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed or marked stopped."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(self.stop_timeout)

    def kill(self) -> None:
        self.kill9()
