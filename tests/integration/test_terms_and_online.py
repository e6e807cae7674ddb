"""Changing terms needs a new approval; `config check --online` asks the real node."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.anvil import AnvilNode, free_port
from tests.support.contracts import deploy
from tests.support.rpcproxy import RpcProxy

pytestmark = pytest.mark.anvil

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


def _config(tmp_path: Path, *, chain_id: int, token: str, decimals: int) -> Path:
    (tmp_path / "watcher.toml").write_text(
        f"""[database]
url = "sqlite:///w.db"

[[chains]]
name = "local"
chain_id = {chain_id}
rpc_urls = ["${{LOCAL_RPC}}"]
receiving_address = "{WALLET}"

[[chains.tokens]]
symbol = "USDC"
address = "{token}"
decimals = {decimals}
"""
    )
    return tmp_path / "watcher.toml"


def _run(config: Path, rpc: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"LOCAL_RPC": rpc, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(config), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def _dump(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


def test_config_check_online_accepts_the_right_chain_and_decimals(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    """--online reads eth_chainId and decimals() from the node and reports them as JSON."""
    token = deploy(anvil.web3(), "TestToken", "USD Coin", "USDC", 6).address
    config = _config(tmp_path, chain_id=anvil.chain_id, token=token, decimals=6)

    with RpcProxy(anvil.url) as proxy:  # keeps the node behind a URL with a key in its path
        out = _run(config, proxy.url + "/v2/SECRETKEY123", "config", "check", "--online", "--json")

    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (chain,) = report["chains"]
    assert chain["rpc"][0]["chain_id"] == anvil.chain_id
    assert chain["tokens"] == [{"symbol": "USDC", "address": token, "decimals": 6}]
    assert "SECRETKEY123" not in out.stdout + out.stderr


def test_config_check_online_names_a_wrong_chain_id(anvil: AnvilNode, tmp_path: Path) -> None:
    """A node on another chain than configured is named on one line, exit 2."""
    token = deploy(anvil.web3(), "TestToken", "USD Coin", "USDC", 6).address
    config = _config(tmp_path, chain_id=8453, token=token, decimals=6)

    out = _run(config, anvil.url, "config", "check", "--online")

    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "chains[0].rpc_urls[0]: node is chain 31337, config says 8453" in line


def test_config_check_online_names_wrong_token_decimals(anvil: AnvilNode, tmp_path: Path) -> None:
    """A token whose decimals() differs from the config is named with both values, exit 2."""
    token = deploy(anvil.web3(), "TestToken", "Dai", "DAI", 18).address
    config = _config(tmp_path, chain_id=anvil.chain_id, token=token, decimals=6)

    out = _run(config, anvil.url, "config", "check", "--online")

    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "chains[0].tokens[0].decimals: 6 in config, 18 on chain for USDC" in line


def test_config_check_online_unreachable_node_is_exit_1(tmp_path: Path) -> None:
    """A node that does not answer cannot be checked: exit 1, one line, the key redacted."""
    token = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    config = _config(tmp_path, chain_id=8453, token=token, decimals=6)

    out = _run(config, f"http://127.0.0.1:{free_port()}/v2/SECRETKEY123", "config", "check",
               "--online")  # fmt: skip

    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1
    assert "unreachable" in out.stderr and "SECRETKEY123" not in out.stderr


def test_changed_terms_need_a_new_approval_before_the_next_invoice(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    """retainer update changes the terms hash; invoicing is refused (exit 3) until re-approved."""
    token = deploy(anvil.web3(), "TestToken", "USD Coin", "USDC", 6).address
    config = _config(tmp_path, chain_id=anvil.chain_id, token=token, decimals=6)
    for args in (
        ("init",),
        ("retainer", "add", "--client", "Acme", "--chain", "local", "--asset", "USDC",
         "--monthly", "1500"),
        ("retainer", "approve", "RET-1", "--by", "Jane"),
    ):  # fmt: skip
        assert _run(config, anvil.url, *args).returncode == 0
    approved = json.loads(_run(config, anvil.url, "retainer", "show", "RET-1", "--json").stdout)

    changed = _run(config, anvil.url, "retainer", "update", "RET-1", "--monthly", "1800")
    assert changed.returncode == 0, changed.stderr
    assert "approve them again" in changed.stdout
    before = _dump(tmp_path / "w.db")
    refused = _run(config, anvil.url, "invoice", "issue", "RET-1")
    assert refused.returncode == 3
    assert "terms changed since the last approval" in refused.stderr
    assert _dump(tmp_path / "w.db") == before

    assert _run(config, anvil.url, "retainer", "approve", "RET-1", "--by", "Jane").returncode == 0
    issued = _run(config, anvil.url, "invoice", "issue", "RET-1", "--json")
    assert issued.returncode == 0, issued.stderr
    invoice = json.loads(issued.stdout)
    assert invoice["price"] == "1800"
    shown = json.loads(_run(config, anvil.url, "retainer", "show", "RET-1", "--json").stdout)
    assert shown["approved_terms_hash"] == shown["terms_hash"] != approved["terms_hash"]


def test_retainer_update_with_a_bad_amount_writes_nothing(anvil: AnvilNode, tmp_path: Path) -> None:
    """A bad --monthly is exit 2 naming the value, and the database is unchanged."""
    token = deploy(anvil.web3(), "TestToken", "USD Coin", "USDC", 6).address
    config = _config(tmp_path, chain_id=anvil.chain_id, token=token, decimals=6)
    assert _run(config, anvil.url, "init").returncode == 0
    add = ("retainer", "add", "--client", "Acme", "--chain", "local", "--asset", "USDC",
           "--monthly", "1500")  # fmt: skip
    assert _run(config, anvil.url, *add).returncode == 0
    before = _dump(tmp_path / "w.db")

    out = _run(config, anvil.url, "retainer", "update", "RET-1", "--monthly", "1.0000001")

    assert out.returncode == 2
    assert "'1.0000001'" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert _dump(tmp_path / "w.db") == before
