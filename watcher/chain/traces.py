"""Native inflows from traces: ``trace_filter`` (address-filtered, ranged) and
``debug_traceBlockByNumber`` with ``callTracer`` (per block).

Both give top-level calls to the wallet (kind ``native``) and internal value calls to it (kind
``internal``, positioned by their rank among the value calls to the wallet in the transaction,
in execution order: both sources give the same rank, so the same uid). Both give the
transactions the wallet sent too, whose fees the balance guard must know (read from receipts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from watcher.chain.calls import as_dict, checksum, hex_value, quantity, same
from watcher.chain.chunk import Inflow


@dataclass(frozen=True, slots=True)
class Frame:
    """A value call to the wallet found by ``trace_filter``; kept only if its transaction
    succeeded (receipt) and, for a nested one, no enclosing call failed (``deep``)."""

    kind: str  # native (top level) | internal
    tx_hash: str
    position: int | None
    block_number: int
    block_hash: str
    from_address: str
    amount: int
    path: tuple[int, ...]

    @property
    def deep(self) -> bool:
        return len(self.path) > 1

    def inflow(self) -> Inflow:
        return Inflow(
            self.kind, self.tx_hash, self.position, self.block_number, self.block_hash,
            self.from_address, self.amount,
        )  # fmt: skip


def filter_frames(traces: Sequence[Any], wallet: str) -> list[Frame]:
    """Value-carrying calls to the wallet in ``trace_filter`` output (top level and internal).
    Errored frames keep their rank but are dropped."""
    per_tx: dict[str, list[dict[str, Any]]] = {}
    for trace in traces:
        item = as_dict(trace, "a trace")
        action = item.get("action") or {}
        if item.get("type") != "call" or action.get("callType") != "call":
            continue
        if not same(action.get("to"), wallet) or quantity(action.get("value", "0x0")) <= 0:
            continue
        per_tx.setdefault(hex_value(item["transactionHash"]), []).append(item)
    out: list[Frame] = []
    for tx_hash, items in per_tx.items():
        items.sort(key=lambda t: list(t.get("traceAddress") or []))
        position = 0
        for item in items:
            path = tuple(item.get("traceAddress") or [])
            rank: int | None = None
            if path:
                rank, position = position, position + 1
            action = item["action"]
            if item.get("error") or (not path and same(action.get("from"), wallet)):
                continue  # failed, or the wallet paying itself (its own spending)
            out.append(
                Frame(
                    "internal" if path else "native",
                    tx_hash,
                    rank,
                    quantity(item["blockNumber"]),
                    hex_value(item["blockHash"]),
                    str(checksum(action["from"])),
                    quantity(action["value"]),
                    path,
                )
            )
    return out


def sent_transactions(traces: Sequence[Any], wallet: str) -> list[dict[str, Any]]:
    """The transactions the wallet sent, from ``trace_filter`` output with ``fromAddress``:
    the top-level frames, shaped like a transaction (hash, from, to, value, block)."""
    out: dict[str, dict[str, Any]] = {}
    for trace in traces:
        item = as_dict(trace, "a trace")
        action = item.get("action") or {}
        if item.get("traceAddress") or not same(action.get("from"), wallet):
            continue
        tx_hash = hex_value(item["transactionHash"])
        out[tx_hash] = {
            "hash": tx_hash, "from": action.get("from"), "to": action.get("to"),
            "value": action.get("value", "0x0"), "blockNumber": item["blockNumber"],
            "blockHash": item["blockHash"],
        }  # fmt: skip
    return list(out.values())


def ancestors_ok(frame: Frame, tree: Sequence[Any]) -> bool:
    """Whether no enclosing call of ``frame`` failed (a reverted parent undoes the transfer)."""
    path = list(frame.path)
    prefixes = {tuple(path[:i]) for i in range(len(path))}
    return not any(
        tuple(t.get("traceAddress") or []) in prefixes and t.get("error")
        for t in tree
        if isinstance(t, dict)
    )


def debug_block(
    traces: Sequence[Any], wallet: str, number: int, block_hash: str
) -> tuple[list[Inflow], list[dict[str, Any]]]:
    """One block's ``callTracer`` output: the value calls to the wallet that took effect (no
    error on the call or any enclosing call), and the transactions the wallet sent."""
    out: list[Inflow] = []
    sent: list[dict[str, Any]] = []
    for entry in traces:
        item = as_dict(entry, "a transaction trace")
        tx_hash = hex_value(item.get("txHash"))
        top = as_dict(item["result"], "a call")
        if same(top.get("from"), wallet):
            sent.append({
                "hash": tx_hash, "from": top.get("from"), "to": top.get("to"),
                "value": top.get("value") or "0x0", "blockNumber": hex(number),
                "blockHash": block_hash,
            })  # fmt: skip
        position = 0
        stack: list[tuple[dict[str, Any], int, bool]] = [(top, 0, True)]
        while stack:  # depth-first, in execution order
            call, depth, ok = stack.pop()
            ok = ok and not call.get("error")
            value = quantity(call.get("value") or "0x0")
            paid = call.get("type") == "CALL" and same(call.get("to"), wallet) and value > 0
            if paid and depth == 0 and ok and not same(call.get("from"), wallet):
                frm = str(checksum(call["from"]))
                out.append(Inflow("native", tx_hash, None, number, block_hash, frm, value))
            elif paid and depth > 0:
                if ok:
                    frm = str(checksum(call["from"]))
                    out.append(
                        Inflow("internal", tx_hash, position, number, block_hash, frm, value)
                    )
                position += 1
            children = call.get("calls") or []
            stack += [(c, depth + 1, ok) for c in reversed(children) if isinstance(c, dict)]
    return out, sent
