"""A built benchmark chain kept alive between runs of ``bench/scan.py`` (``--keep-chain DIR``).

Building the 20,073-block chain takes 4-5 minutes, mostly ``anvil_mine``. With ``--keep-chain
DIR`` the cost section builds its standard chain once in an Anvil started *detached* (its own
session, ``HOME`` and log in DIR), takes an ``evm_snapshot`` and records in ``DIR/chain.pickle``
the node's URL and pid, the snapshot id, the ``BuiltChain`` and the ``ChainBuilder``'s state
(nonces, random generator, contracts). A later run with the same DIR, ``--blocks`` and
``--seed`` finds the node alive, connects to it, and at the end reverts it to the snapshot
(dropping the steady state's blocks) and takes a fresh one: every run sees the same chain.

Why a live node and not ``--dump-state`` / ``--load-state``: the balance guard reads
balances at old blocks, which a loaded dump only answers with ``--preserve-historical-states``,
and that dump is about 180 kB per block (226 MB for 1,272 blocks, measured 2026-12-01): some
3.5 GB for 20,073 blocks. A snapshot of a live node costs nothing.

``python bench/kept_chain.py stop DIR`` stops the kept node and deletes its files.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import random  # noqa: E402

import requests  # noqa: E402
from eth_utils import to_checksum_address  # noqa: E402

from bench.chain import BuiltChain, ChainBuilder, Rpc  # noqa: E402
from tests.support.anvil import AnvilNode, free_port  # noqa: E402

RECORD = "chain.pickle"


@dataclass
class KeptNode:
    """What ``ChainBuilder`` and the cost section need of a node: its URL and accounts."""

    url: str
    pid: int
    _accounts: list[str]

    def accounts(self) -> list[str]:
        return list(self._accounts)


@dataclass
class Record:
    url: str
    pid: int
    blocks: int
    seed: int
    snapshot: str
    built: BuiltChain
    builder: dict[str, Any]  # ChainBuilder.__dict__ without its Rpc
    accounts: list[str]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        Rpc(url).call("eth_chainId")
    except (requests.RequestException, RuntimeError):
        return False
    return True


def _start_detached(directory: Path, extra_args: list[str]) -> tuple[str, int]:
    """An Anvil node that outlives this process (own session), HOME and log in ``directory``."""
    port = free_port()
    command = AnvilNode(no_mining=True, extra_args=extra_args).command(port)
    home = directory / "home"
    home.mkdir(parents=True, exist_ok=True)
    log = (directory / "anvil.log").open("ab")
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, HOME=str(home)), cwd=home, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: kept anvil exited at start-up, see {directory}/anvil.log")
        if _answers(url):
            return url, process.pid
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"bench: kept anvil did not answer at {url}")


def _builder_state(builder: ChainBuilder) -> dict[str, Any]:
    return {k: v for k, v in builder.__dict__.items() if k != "rpc"}


def _restore(record: Record) -> tuple[KeptNode, ChainBuilder]:
    node = KeptNode(record.url, record.pid, record.accounts)
    builder = ChainBuilder.__new__(ChainBuilder)
    builder.__dict__.update(pickle.loads(pickle.dumps(record.builder)))  # a fresh copy
    builder.rpc = Rpc(record.url)
    return node, builder


def load(directory: Path, blocks: int, seed: int) -> Record | None:
    """The kept chain in ``directory`` if it is alive and was built with ``blocks``/``seed``."""
    path = directory / RECORD
    if not path.exists():
        return None
    record: Record = pickle.loads(path.read_bytes())
    if (record.blocks, record.seed) != (blocks, seed):
        print(f"  kept chain in {directory} is for --blocks {record.blocks} --seed {record.seed}")
        return None
    if not (_alive(record.pid) and _answers(record.url)):
        print(f"  kept chain in {directory}: its node (pid {record.pid}) is gone; rebuilding")
        return None
    return record


@contextlib.contextmanager
def kept_chain(
    directory: Path, blocks: int, seed: int, extra_args: list[str]
) -> Iterator[tuple[KeptNode, ChainBuilder, BuiltChain, bool]]:
    """(node, builder, built, reused): the standard chain of ``blocks`` blocks, built once;
    on leaving, the node goes back to the built chain (snapshot) for the next run."""
    directory.mkdir(parents=True, exist_ok=True)
    record = load(directory, blocks, seed)
    reused = record is not None
    if record is None:
        stop(directory)
        url, pid = _start_detached(directory, extra_args)
        accounts = [to_checksum_address(a) for a in Rpc(url).call("eth_accounts")]
        start_node = KeptNode(url, pid, accounts)
        builder = ChainBuilder(start_node, random.Random(seed))  # type: ignore[arg-type]
        built = builder.build(blocks)
        snapshot = str(builder.rpc.call("evm_snapshot"))
        record = Record(
            url, pid, blocks, seed, snapshot, built, _builder_state(builder),
            start_node.accounts(),
        )  # fmt: skip
        (directory / RECORD).write_bytes(pickle.dumps(record))
    node, builder = _restore(record)
    try:
        yield node, builder, record.built, reused
    finally:
        rpc = Rpc(record.url)
        if not rpc.call("evm_revert", record.snapshot):
            raise SystemExit(f"bench: kept chain: evm_revert {record.snapshot} failed")
        record.snapshot = str(rpc.call("evm_snapshot"))
        (directory / RECORD).write_bytes(pickle.dumps(record))
        rpc.close()
        builder.rpc.close()


@contextlib.contextmanager
def standard_chain(
    args: Any, node_args: list[str]
) -> Iterator[tuple[Any, ChainBuilder, BuiltChain]]:
    """The cost section's standard chain: kept in ``args.keep_chain`` if given, else built on
    a fresh Anvil that is stopped on leaving."""
    keep: Path | None = getattr(args, "keep_chain", None)
    if keep is not None:
        with kept_chain(keep, args.blocks, args.seed, node_args) as (node, builder, built, again):
            if again:
                print(f"  (the kept chain in {keep}, built earlier in {built.seconds:.0f} s)")
            yield node, builder, built
        return
    with AnvilNode(no_mining=True, extra_args=node_args) as fresh:
        builder = ChainBuilder(fresh, random.Random(args.seed))
        yield fresh, builder, builder.build(args.blocks)


def stop(directory: Path) -> None:
    """Stop the kept node recorded in ``directory`` (if any) and delete its files."""
    path = directory / RECORD
    if path.exists():
        record: Record = pickle.loads(path.read_bytes())
        if _alive(record.pid):
            os.kill(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _alive(record.pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(record.pid, os.WNOHANG)
                time.sleep(0.05)
        path.unlink()
    for name in ("home", "anvil.log"):
        target = directory / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "stop":
        raise SystemExit("usage: bench/kept_chain.py stop DIR")
    stop(Path(sys.argv[2]))
