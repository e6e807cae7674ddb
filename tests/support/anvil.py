"""Run a real Anvil node for tests.

The binary comes from ``make tools`` (npm package ``@foundry-rs/anvil-linux-amd64``) and is
started directly, never through the node wrapper. Every node gets its own free port and its own
temporary ``HOME`` (Anvil writes historical state to ``$HOME/.foundry`` and never cleans it).
A missing binary is an error, not a skip: integration tests must fail loudly without it.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from web3 import Web3

from tests.support.service import Service

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ANVIL = REPO_ROOT / "tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
RPC_TIMEOUT = 10.0

# Started and not yet stopped (strong references, so the atexit hook can still reach them).
_live_nodes: set[AnvilNode] = set()


def anvil_binary() -> Path:
    """Path of the Anvil binary: ``$ANVIL_BIN`` if set, else the one ``make tools`` installs."""
    path = Path(os.environ.get("ANVIL_BIN") or DEFAULT_ANVIL)
    if not path.is_file():
        raise RuntimeError(f"anvil not found at {path}: run `make tools`")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AnvilError(RuntimeError):
    """A JSON-RPC error answer from Anvil."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code = error.get("code")
        self.error = error
        super().__init__(f"{method}: {error.get('message')} (code {self.code})")


class AnvilNode(Service):
    """One Anvil process on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        slots_in_an_epoch: int | None = None,
        block_time: float | None = None,
        no_mining: bool = False,
        extra_args: Sequence[str] = (),
        home: Path | None = None,
    ) -> None:
        self.slots_in_an_epoch = slots_in_an_epoch
        self.block_time = block_time
        self.no_mining = no_mining
        self.extra_args = list(extra_args)
        self._home_arg = home
        self.home: Path | None = None
        self.log_path: Path | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.process_args: list[str] = []
        self.chain_id: int | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: Any = None
        self._session: requests.Session | None = None
        self._ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        """The command line that start() runs for ``port``."""
        cmd = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(port)]
        if self.slots_in_an_epoch is not None:
            cmd += ["--slots-in-an-epoch", str(self.slots_in_an_epoch)]
        if self.block_time is not None:
            cmd += ["--block-time", f"{self.block_time:g}"]
        if self.no_mining:
            cmd.append("--no-mining")
        return cmd + self.extra_args

    def start(self) -> AnvilNode:
        """Launch the node and wait until it answers ``eth_chainId``; returns self."""
        if self.process is not None:
            raise RuntimeError("AnvilNode already started")
        anvil_binary()  # fail early, before creating anything
        self._tmp = tempfile.TemporaryDirectory(prefix="anvil-")
        tmp = Path(self._tmp.name)
        self.home = self._home_arg or tmp
        self.log_path = tmp / "anvil.log"
        self._session = requests.Session()
        _live_nodes.add(self)
        try:
            # Another process may grab the port between free_port() and Anvil's bind: retry.
            for attempt in range(3):
                if self._launch(free_port()):
                    return self
                tail = self.log_tail()
                self._terminate()
                if "address already in use" not in tail.lower() or attempt == 2:
                    raise RuntimeError(
                        f"anvil exited during start-up (command: {self.process_args})\n{tail}"
                    )
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _launch(self, port: int) -> bool:
        """Start the process on ``port``; True once it answers, False if it exited early."""
        assert self.home is not None and self.log_path is not None
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process_args = self.command(port)
        env = dict(os.environ, HOME=str(self.home))
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.process_args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.home,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                self.chain_id = int(self.rpc("eth_chainId", timeout=0.5), 16)
                return True
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.02)
        tail = self.log_tail()
        raise RuntimeError(
            f"anvil did not answer eth_chainId within {START_TIMEOUT:g} s at {self.url}\n{tail}"
        )

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate the process (kill after 5 s) and delete the temporary directory."""
        self._terminate()
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        _live_nodes.discard(self)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the node's combined stdout/stderr (empty once stopped)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- JSON-RPC --------------------------------------------------------------------------

    def rpc(self, method: str, *params: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Call ``method`` with plain JSON-RPC; return the result or raise AnvilError."""
        if self.url is None or self._session is None:
            raise RuntimeError("AnvilNode is not started")
        payload: dict[str, Any] = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": list(params),
        }
        response = self._session.post(self.url, json=payload, timeout=timeout)
        response.raise_for_status()
        body = response.json()
        if body.get("error") is not None:
            raise AnvilError(method, body["error"])
        return body["result"]

    def mine(self, n: int = 1) -> None:
        """Mine ``n`` blocks now (works with --no-mining too)."""
        self.rpc("anvil_mine", hex(n))

    def snapshot(self) -> str:
        """Take an EVM snapshot; returns its id for revert()."""
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> bool:
        """Go back to a snapshot (which is consumed); True on success."""
        return bool(self.rpc("evm_revert", snapshot_id))

    def reorg(self, depth: int, txs: Sequence[tuple[Any, int]] = ()) -> None:
        """Replace the last ``depth`` blocks; ``txs`` are (tx, block offset) pairs to include.

        Each tx is a transaction request dict or a raw signed transaction (0x hex). The old
        transactions vanish and their old block hashes become unknown.
        """
        self.rpc("anvil_reorg", depth, [[tx, offset] for tx, offset in txs])

    def rollback(self, n: int) -> None:
        """Drop the last ``n`` blocks."""
        self.rpc("anvil_rollback", n)

    def set_balance(self, address: str, wei: int) -> None:
        self.rpc("anvil_setBalance", address, hex(wei))

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, tag: str | int = "latest") -> dict[str, Any]:
        """The block (without transaction bodies) for a tag or number, as raw JSON."""
        ref = hex(tag) if isinstance(tag, int) else tag
        result: dict[str, Any] = self.rpc("eth_getBlockByNumber", ref, False)
        return result

    def accounts(self) -> list[str]:
        """The 10 funded, unlocked dev accounts (checksummed)."""
        return [Web3.to_checksum_address(a) for a in self.rpc("eth_accounts")]

    def dump_state(self) -> str:
        """``anvil_dumpState``: the chain state as a hex string."""
        return str(self.rpc("anvil_dumpState"))

    def web3(self) -> Web3:
        """A fresh synchronous Web3 client for this node."""
        if self.url is None:
            raise RuntimeError("AnvilNode is not started")
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": RPC_TIMEOUT}))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<AnvilNode {self.url or '-'} {state}>"


@atexit.register
def _stop_leftover_nodes() -> None:
    """Last line of defence: never leave an Anvil process behind the interpreter."""
    for node in list(_live_nodes):
        node.stop()
