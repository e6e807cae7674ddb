"""What a chaos run must leave behind, checked against the canonical chain (Anvil, read
directly, not through the proxy) and the SQLite file (read-only, as an operator may).

The canonical inflows are rebuilt from the receipts of every transaction the driver sent: a
transaction whose receipt is gone was dropped by a reorg. The stored transfers that are not
``orphaned`` must be exactly those inflows (same tx, block hash, log index for ERC-20, amount);
every invoice the driver paid on the canonical chain must be settled by that payment only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
SETTLED = ("paid", "paid_late")

#: (kind, tx hash, block hash, log index for erc20 else None, amount), all hex lower-case.
Key = tuple[str, str, str, int | None, int]


@dataclass
class Sent:
    """A transaction the driver sent that pays the wallet."""

    tx: str
    kind: str  # erc20 | native | internal | many
    amounts: tuple[int, ...]  # what it pays the wallet, inflow by inflow
    invoice: str | None  # the invoice it pays, "INV-3" (None: a stray payment)
    step: int
    fate: str = "mined"  # mined | moved (re-included by a reorg) | dropped (gone) | sent again


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def canonical_inflows(
    rpc: Callable[..., Any], sent: Sequence[Sent], *, token: str, wallet: str
) -> tuple[Counter[Key], set[str]]:
    """The inflows to ``wallet`` on the canonical chain among ``sent``, and the set of sent
    tx hashes that are canonical (mined with status 1)."""
    keys: Counter[Key] = Counter()
    canonical: set[str] = set()
    for s in {s.tx.lower(): s for s in sent}.values():  # a tx sent twice is one tx
        receipt = rpc("eth_getTransactionReceipt", s.tx)
        if receipt is None or int(receipt["status"], 16) != 1:
            continue
        tx, block = s.tx.lower(), receipt["blockHash"].lower()
        canonical.add(tx)
        if s.kind == "erc20":
            for entry in receipt["logs"]:
                topics = [t.lower() for t in entry["topics"]]
                if (
                    entry["address"].lower() == token.lower()
                    and topics[:1] == [TRANSFER_TOPIC]
                    and topics[2:3] == [_topic(wallet)]
                ):
                    amount = int(entry["data"], 16)
                    keys[("erc20", tx, block, int(entry["logIndex"], 16), amount)] += 1
        elif s.kind == "native":
            keys[("native", tx, block, None, s.amounts[0])] += 1
        else:
            for amount in s.amounts:
                keys[("internal", tx, block, None, amount)] += 1
    return keys, canonical


def row_key(row: dict[str, Any]) -> Key:
    kind = str(row["kind"])
    log_index = row["log_index"] if kind == "erc20" else None
    amount = int(row.get("amount_base_units", row.get("amount")))
    return (kind, str(row["tx_hash"]).lower(), str(row["block_hash"]).lower(), log_index, amount)


def verify(
    *,
    query: Callable[..., list[dict[str, Any]]],
    expected: Counter[Key],
    canonical_txs: set[str],
    sent: Sequence[Sent],
    invoice_amounts: dict[str, int],
    delivered_ids: Counter[str],
    delivered_bodies: dict[str, set[bytes]],
    logs: str,
    secret_marker: str,
    block_hash_at: Callable[[int], str],
) -> tuple[list[Check], dict[str, Any]]:
    """The run's checks (any failing one fails the run) and the figures read on the way."""
    checks: list[Check] = []
    transfers = query("SELECT kind, tx_hash, block_hash, log_index, amount, status FROM transfers")
    live = Counter(row_key(t) for t in transfers if t["status"] != "orphaned")
    missing, extra = expected - live, live - expected
    doubled = [k for k in extra if k[1] in canonical_txs]
    stale = [k for k in extra if k[1] not in canonical_txs]
    per_tx_live = Counter((k[0], k[1]) for k in live.elements())
    per_tx_expected = Counter((k[0], k[1]) for k in expected.elements())
    over = {k: n for k, n in per_tx_live.items() if n > per_tx_expected.get(k, 0)}
    checks.append(
        Check(
            "no transfer counted twice",
            not over and not doubled,
            f"{len(over)} tx with more rows than inflows: {sorted(over)[:3]}; "
            f"{len(doubled)} rows off the canonical block/log: {doubled[:3]}",
        )
    )
    checks.append(
        Check(
            "no transfer kept from a branch that left the chain",
            not stale,
            f"{len(stale)}: {stale[:3]}",
        )
    )
    checks.append(
        Check(
            "every canonical inflow stored once (nothing lost)",
            not missing,
            f"{sum(missing.values())} missing: {list(missing)[:3]}",
        )
    )
    not_final = [t for t in transfers if t["status"] == "seen"]
    checks.append(
        Check(
            "every canonical inflow final at the end", not not_final, f"{len(not_final)} still seen"
        )
    )

    invoices = {r["id"]: r for r in query("SELECT * FROM v_invoices")}
    payments = query("SELECT * FROM v_payments WHERE invoice_id IS NOT NULL")
    paid_off_chain = [
        (p["invoice_id"], p["tx_hash"])
        for p in payments
        if invoices[p["invoice_id"]]["status"] in SETTLED and row_key(p) not in expected
    ]
    cycles = query("SELECT id, funded_by_invoice, proof_tx_hash FROM v_cycles")
    proof_off_chain = [
        (c["id"], c["proof_tx_hash"])
        for c in cycles
        if str(c["proof_tx_hash"]).lower() not in canonical_txs
    ]
    checks.append(
        Check(
            "no invoice paid by a tx off the canonical chain",
            not paid_off_chain and not proof_off_chain,
            f"payments {paid_off_chain[:3]}, cycle proofs {proof_off_chain[:3]}",
        )
    )

    paying: dict[str, list[str]] = {}
    for s in sent:
        if s.invoice is not None and s.tx.lower() in canonical_txs:
            paying.setdefault(s.invoice, []).append(s.tx.lower())
    unpaid = [ref for ref in paying if invoices[ref]["status"] not in SETTLED]
    wrong = [
        ref
        for ref, inv in invoices.items()
        if inv["status"] in SETTLED
        and (
            int(inv["paid_amount_base_units"]) != invoice_amounts[ref]
            or sorted(str(p["tx_hash"]).lower() for p in json.loads(inv["payments"]))
            != sorted(paying.get(ref, []))
        )
    ]
    checks.append(
        Check(
            "every invoice paid on the canonical chain is settled",
            not unpaid,
            f"unsettled: {unpaid[:5]}",
        )
    )
    checks.append(
        Check(
            "each settled invoice is funded by exactly its canonical payment",
            not wrong,
            f"{wrong[:5]}",
        )
    )

    events = query("SELECT id, type, body FROM outbox ORDER BY seq")
    by_type = Counter(str(e["type"]) for e in events)
    opened = [e for e in events if e["type"] == "cycle.opened"]
    opened_per_invoice = Counter(json.loads(e["body"])["data"]["invoice_id"] for e in opened)
    cycles_per_invoice = Counter(c["funded_by_invoice"] for c in cycles)
    twice = {f"{k} cycle.opened": n for k, n in opened_per_invoice.items() if n > 1}
    twice.update({f"{k} cycles": n for k, n in cycles_per_invoice.items() if n > 1})
    checks.append(Check("no cycle opened twice", not twice, f"{twice}"))
    never = [e["id"] for e in opened if delivered_ids[e["id"]] == 0]
    checks.append(Check("every cycle.opened delivered", not never, f"never delivered: {never[:5]}"))
    lost_events = [e["id"] for e in events if delivered_ids[e["id"]] == 0]
    checks.append(
        Check(
            "every outbox event delivered",
            not lost_events,
            f"{len(lost_events)} never delivered: {lost_events[:5]}",
        )
    )
    false_orphans = []  # orphaned although the block it was seen in is still canonical
    for e in events:
        if e["type"] == "payment.orphaned":
            data = json.loads(e["body"])["data"]
            canonical_hash = block_hash_at(int(data["block_number"])).lower()
            if canonical_hash == str(data["block_hash"]).lower():
                false_orphans.append((data["invoice_id"], data["tx_hash"], data["block_number"]))
    checks.append(
        Check(
            "no payment orphaned while its block stayed on the chain",
            not false_orphans,
            f"{len(false_orphans)}: {false_orphans[:3]}",
        )
    )
    stored = {str(e["id"]): str(e["body"]).encode() for e in events}
    differing = [k for k, bodies in delivered_bodies.items() if bodies != {stored.get(k)}]
    checks.append(
        Check(
            "every delivery (repeats too) is its stored event byte for byte",
            not differing,
            f"{len(differing)} events: {differing[:3]}",
        )
    )
    violations = by_type.get("watcher.finality_violation", 0)
    checks.append(
        Check(
            "no finality violation (reorgs stay above the final block)",
            violations == 0,
            f"{violations} raised",
        )
    )
    leaks = logs.count(secret_marker)
    checks.append(Check("the RPC URL's key never appears in a log", leaks == 0, f"{leaks} lines"))

    figures = {
        "transfers": Counter(str(t["status"]) for t in transfers),
        "events": by_type,
        "settled": sum(inv["status"] in SETTLED for inv in invoices.values()),
        "invoices": len(invoices),
        "cycles": len(cycles),
    }
    return checks, figures
