"""``proof verify`` end to end: a settled payment's proof re-checked by the real program against
real Anvil nodes, from the JSON file alone (no database) or from the invoice id.

One node serves the module (see ``chain_harness``); a payment mined in block B is final once two
more blocks are mined. A second, fresh Anvil plays "another node with another history".
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.e2e.chain_harness import (
    CLI_TIMEOUT,
    Chain,
    Workspace,
    usdc,
)
from tests.support.anvil import AnvilNode, free_port
from tests.support.contracts import deploy, wait_receipt
from watcher.schemas.proof import proof_schema

pytestmark = pytest.mark.anvil

T1 = "2026-03-03T10:00:00Z"  # payments are mined (INV-1 and INV-2 are due 2026-03-09T09:00)
T2 = "2026-03-03T10:30:00Z"  # ... and scanned


def settle(ws: Workspace, chain: Chain) -> tuple[str, Path]:
    """The expected payer pays INV-1 in full, it becomes final and paid; its proof is saved
    with ``proof INV-1 -o FILE``. The tx hash and the file."""
    chain.at(T1)
    tx = chain.pay(chain.payer, usdc("1500"))
    chain.finalize()
    ws.scan(now=T2)
    assert ws.status_of("INV-1") == "paid"
    path = ws.root / "INV-1.proof.json"
    assert ws.ok("proof", "INV-1", "-o", str(path)).strip() == f"wrote {path}"
    return tx, path


def verify(ws: Workspace, *args: str) -> CompletedProcess[str]:
    return ws.run("proof", "verify", *args)


def one_error_line(result: CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("proofwatch: error: "), lines[0]
    return lines[0]


def test_saved_proof_verifies_against_the_node_without_the_database(
    ws: Workspace, chain: Chain, tmp_path: Path
) -> None:
    """A proof saved as JSON matches proof-v1 (jsonschema) and verifies against the node from
    the file alone, from the config's URL, and by invoice id; --json says what was checked."""
    tx, path = settle(ws, chain)
    bundle = json.loads(path.read_text())
    schema = proof_schema()
    Draft202012Validator.check_schema(schema)
    assert list(Draft202012Validator(schema).iter_errors(bundle)) == []
    assert bundle["schema"] == "proof-v1" and bundle["payments"][0]["block_time"] is not None

    (ws.root / "data" / "watcher.db").rename(ws.root / "elsewhere.db")  # no database at all
    url = str(chain.node.url)
    result = verify(ws, str(path), "--rpc", url, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["mismatch"] is None
    assert (report["invoice"], report["chain_id"], report["schema"]) == ("INV-1", 31337, "proof-v1")
    checked = {c["field"] for c in report["checks"]}
    assert {
        "chain.chain_id",
        "payments[0].tx_hash",
        "payments[0].block_hash",
        "payments[0].block_time",
        "payments[0].from",
        "payments[0].amount_base_units",
        "payments[0].block_number",
        "asset.decimals",
        "invoice.paid_amount_base_units",
        "retainer.terms",
        "retainer.terms_hash",
    } <= checked
    assert all(c["ok"] for c in report["checks"])

    text = verify(ws, str(path))  # the config's RPC URL for chain 31337
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("verified INV-1 on chain 31337")
    assert f"transaction {tx} is on the node" in text.stdout

    bare = subprocess.run(  # no config, no database: the file and the node are enough
        [sys.executable, "-m", "watcher", "proof", "verify", str(path), "--rpc", url],
        cwd=tmp_path,
        env=ws.env(None),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.startswith("verified INV-1") and not (tmp_path / "config").exists()

    (ws.root / "elsewhere.db").rename(ws.root / "data" / "watcher.db")
    by_id = verify(ws, "INV-1", "--rpc", url)
    assert by_id.returncode == 0, by_id.stderr
    assert "verified INV-1" in by_id.stdout


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets the field at ``path`` (keys and list indexes) to ``value``."""

    def edit(bundle: dict[str, Any]) -> None:
        target: Any = bundle
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


#: One edit of a field of the saved bundle -> the field the mismatch must name.
TAMPERED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "amount base units": (
        _set("payments", 0, "amount_base_units", value="1600000000"),
        "payments[0].amount_base_units",
    ),
    "decimal amount": (_set("payments", 0, "amount", value="1600"), "payments[0].amount"),
    "paid amount": (
        _set("invoice", "paid_amount_base_units", value="1600000000"),
        "invoice.paid_amount_base_units",
    ),
    "tx hash": (_set("payments", 0, "tx_hash", value="0x" + "ab" * 32), "payments[0].tx_hash"),
    "block hash": (
        _set("payments", 0, "block_hash", value="0x" + "cd" * 32),
        "payments[0].block_hash",
    ),
    "block time": (
        _set("payments", 0, "block_time", value="2020-01-01T00:00:00Z"),
        "payments[0].block_time",
    ),
    "block number": (_set("payments", 0, "block_number", value=1), "payments[0].block_number"),
    "sender": (
        _set("payments", 0, "from", value="0x00000000000000000000000000000000C0FFEE01"),
        "payments[0].from",
    ),
    "terms": (
        _set("retainer", "terms", "scope", value="Support retainer: 200 h/month"),
        "retainer.terms",
    ),
    "terms price": (
        _set("retainer", "terms", "monthly_base_units", value="150000000"),
        "retainer.terms",
    ),
    "terms hash": (
        _set("retainer", "terms_hash", value="sha256:" + "0" * 64),
        "retainer.terms_hash",
    ),
    "decimals": (_set("asset", "decimals", value=18), "asset.decimals"),
    "chain id": (_set("chain", "chain_id", value=8453), "chain.chain_id"),
}


def test_tampered_bundle_fails_naming_the_field(ws: Workspace, chain: Chain) -> None:
    """Each edited field of a valid bundle (amount, tx, block hash, terms, ...) makes verify
    exit 3 with one line naming that field, and --json reports the same mismatch."""
    _, path = settle(ws, chain)
    original = json.loads(path.read_text())
    url = str(chain.node.url)

    def run(name: str) -> tuple[str, CompletedProcess[str]]:
        edit, _ = TAMPERED[name]
        bundle = copy.deepcopy(original)
        edit(bundle)
        bad = ws.root / f"tampered-{name.replace(' ', '-')}.json"
        bad.write_text(json.dumps(bundle))
        return name, verify(ws, str(bad), "--rpc", url, "--json")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, TAMPERED))
    for name, result in results.items():
        field = TAMPERED[name][1]
        assert result.returncode == 3, (name, result.returncode, result.stderr)
        line = one_error_line(result)
        assert f"does not verify: {field}:" in line, (name, line)
        report = json.loads(result.stdout)
        assert report["verified"] is False and report["mismatch"]["field"] == field, name


def test_proof_fails_against_another_node_with_another_history(ws: Workspace, chain: Chain) -> None:
    """A second Anvil (same chain id, its own history) does not know the transaction: exit 3
    naming payments[0].tx_hash."""
    tx, path = settle(ws, chain)
    with AnvilNode(slots_in_an_epoch=1) as other:
        other.mine(10)
        result = verify(ws, str(path), "--rpc", str(other.url))
    assert result.returncode == 3, result.stderr
    line = one_error_line(result)
    assert "payments[0].tx_hash" in line and tx in line and "unknown to the node" in line
    assert result.stdout == ""


def test_proof_of_a_payment_later_reorged_away_fails(ws: Workspace, chain: Chain) -> None:
    """After a reorg that drops the payment's block the saved proof no longer verifies (exit 3
    naming the transaction), where it verified before."""
    tx, path = settle(ws, chain)
    url = str(chain.node.url)
    assert verify(ws, str(path), "--rpc", url).returncode == 0
    block = chain.receipt(tx)["blockNumber"]
    chain.node.reorg(chain.node.block_number() - block + 1)
    chain.mine(3)
    result = verify(ws, str(path), "--rpc", url)
    assert result.returncode == 3, result.stderr
    assert "payments[0].tx_hash" in one_error_line(result)


def test_payment_not_deep_enough_fails_and_unreachable_node_exits_1(
    ws: Workspace, chain: Chain
) -> None:
    """With --finality 50 (confirmations) the payment's block is not final yet: exit 3 naming
    the block number; a node nobody listens on: exit 1; a bad --finality: exit 2."""
    _, path = settle(ws, chain)
    with ThreadPoolExecutor(max_workers=3) as pool:
        deep, down, bad = pool.map(
            lambda args: verify(ws, str(path), *args),
            [
                ("--rpc", str(chain.node.url), "--finality", "50"),
                ("--rpc", f"http://127.0.0.1:{free_port()}/secret-key-123"),
                ("--rpc", str(chain.node.url), "--finality", "soon"),
            ],
        )
    assert deep.returncode == 3, deep.stderr
    assert "payments[0].block_number" in one_error_line(deep)
    assert "not final" in deep.stderr
    assert down.returncode == 1, down.stderr
    one_error_line(down)
    assert "secret-key-123" not in down.stderr
    assert bad.returncode == 2 and "--finality 'soon'" in one_error_line(bad)


def test_file_that_is_not_a_proof_is_bad_input(ws: Workspace, chain: Chain) -> None:
    """A file that is not JSON, or JSON that breaks proof-v1, is refused with exit 2 naming
    the file or the field; a missing file too."""
    not_json = ws.root / "not.json"
    not_json.write_text("{nope")
    broken = ws.root / "broken.json"
    broken.write_text(json.dumps({"schema": "proof-v1", "chain": {"chain_id": 31337}}))
    url = str(chain.node.url)
    with ThreadPoolExecutor(max_workers=3) as pool:
        a, b, c = pool.map(
            lambda name: verify(ws, str(ws.root / name), "--rpc", url),
            ["not.json", "broken.json", "missing.json"],
        )
    assert a.returncode == 2 and "not.json" in one_error_line(a)
    assert b.returncode == 2 and "does not match proof-v1" in one_error_line(b)
    assert c.returncode == 2 and "missing.json" in one_error_line(c)


def test_native_and_internal_eth_payments_verify(ws: Workspace, chain: Chain) -> None:
    """A top-level ETH payment (the tx value) and an internal one (a contract's call, found by
    trace position) both verify; a wrong trace position or a wrong value is named."""
    ws.config.write_text(
        ws.config.read_text().replace(
            'native_symbol = "ETH"\n', 'native_symbol = "ETH"\ninternal = "trace_filter"\n'
        )
    )
    add = ("retainer", "add", "--chain", "local", "--asset", "ETH", "--monthly", "0.5")
    invoices = []
    for client in ("Ether Ltd", "Safe Co"):
        rid = ws.ok(*add, "--client", client).strip()
        ws.ok("retainer", "approve", rid, "--by", "Eve")
        invoices.append(ws.json("invoice", "issue", rid))
    top, inner = invoices
    forwarder = deploy(chain.w3, "Forwarder")
    chain.at(T1)
    native_tx = chain.pay_eth(chain.stranger, int(top["amount_base_units"]))
    internal_tx = forwarder.functions.forward(top["pay_to"]).transact(
        {"from": chain.stranger, "value": int(inner["amount_base_units"])}
    )
    wait_receipt(chain.w3, internal_tx)
    chain.finalize()
    ws.scan(now=T2)
    files = {}
    for invoice in invoices:
        assert ws.status_of(invoice["id"]) == "paid", invoice["id"]
        files[invoice["id"]] = ws.root / f"{invoice['id']}.json"
        ws.ok("proof", invoice["id"], "-o", str(files[invoice["id"]]))
    paid = {i: json.loads(f.read_text())["payments"][0] for i, f in files.items()}
    assert (paid[top["id"]]["kind"], paid[top["id"]]["tx_hash"]) == ("native", native_tx)
    assert (paid[inner["id"]]["kind"], paid[inner["id"]]["log_index"]) == ("internal", 0)
    assert paid[inner["id"]]["tx_hash"] == internal_tx.to_0x_hex()

    def tampered(ref: str, key: str, value: Any) -> str:
        bundle = json.loads(files[ref].read_text())
        bundle["payments"][0][key] = value
        path = ws.root / f"{ref}-{key}.json"
        path.write_text(json.dumps(bundle))
        return str(path)

    url = str(chain.node.url)
    runs = [
        (str(files[top["id"]]), 0, ""),
        (str(files[inner["id"]]), 0, ""),
        (tampered(inner["id"], "log_index", 1), 3, "payments[0].log_index"),
        (tampered(top["id"], "amount_base_units", "1"), 3, "payments[0].amount_base_units"),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda run: verify(ws, run[0], "--rpc", url), runs))
    for (path, code, field), result in zip(runs, results, strict=True):
        assert result.returncode == code, (path, result.stderr)
        if code == 0:
            assert result.stdout.startswith("verified "), result.stdout
        else:
            assert f"does not verify: {field}:" in one_error_line(result), path


def test_balance_attributed_internal_payment_verifies_by_balances(
    ws: Workspace, chain: Chain
) -> None:
    """An internal payment attached on the balance guard's word (no traces) verifies by the
    wallet's and the contract's balances over its block; a larger amount or another sender
    is named."""
    rid = ws.ok("retainer", "add", "--chain", "local", "--asset", "ETH", "--monthly", "1",
                "--client", "Safe Co").strip()  # fmt: skip
    ws.ok("retainer", "approve", rid, "--by", "Jane Doe")
    invoice = ws.json("invoice", "issue", rid)
    forwarder = deploy(chain.w3, "Forwarder")
    chain.at(T1)
    sent = forwarder.functions.forward(invoice["pay_to"]).transact(
        {"from": chain.payer, "value": int(invoice["amount_base_units"])}
    )
    tx = wait_receipt(chain.w3, sent)["transactionHash"].to_0x_hex()
    chain.finalize()
    assert ws.scan(now=T2)["unexplained"] == 1  # no traces asked for: only the guard saw it
    ws.ok("invoice", "attach", invoice["id"], tx, now=T2, quiet=False)
    ws.scan(now=T2)
    path = ws.root / "attributed.json"
    ws.ok("proof", invoice["id"], "-o", str(path))
    bundle = json.loads(path.read_text())
    assert bundle["payments"][0]["attribution"] == "balance"

    def variant(name: str, key: str, value: Any) -> str:
        edited = copy.deepcopy(bundle)
        edited["payments"][0][key] = value
        out = ws.root / f"{name}.json"
        out.write_text(json.dumps(edited))
        return str(out)

    url = str(chain.node.url)
    runs = [
        (str(path), 0, ""),
        (variant("more", "amount_base_units", "2000000000000000001"), 3, "amount_base_units"),
        (variant("sender", "from", chain.payer), 3, "payments[0].from"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda run: verify(ws, run[0], "--rpc", url), runs))
    for (file, code, field), result in zip(runs, results, strict=True):
        assert result.returncode == code, (file, result.stderr)
        if code == 0:
            assert "attributed by balance" in result.stdout
        else:
            assert field in one_error_line(result), (file, result.stderr)
