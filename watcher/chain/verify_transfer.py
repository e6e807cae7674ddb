"""``proof verify``, one payment's transfer: the ERC-20 log, the native value, the internal
call at its trace position, or a balance-attributed internal payment (``watcher.chain.verify``
runs the checks in order; this module owns what a transfer must look like on chain)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from watcher.chain.rpc import RpcPool
from watcher.chain.sources import TRANSFER_TOPIC, decode_amount, quantity, same
from watcher.domain.addresses import to_checksum_address
from watcher.domain.proof_rules import check
from watcher.errors import RpcError, WatcherError

if TYPE_CHECKING:
    from watcher.chain.verify import Verification


def checksum(value: Any) -> str | None:
    return str(to_checksum_address(value)) if isinstance(value, str) and len(value) == 42 else None


class Checker:
    """Appends each check to the verification; returns whether it passed."""

    def __init__(self, out: Verification) -> None:
        self.out = out

    def check(self, name: str, ok: bool, good: str, bad: str) -> bool:
        self.out.checks.append(check(name, ok, good, bad))
        return ok


def check_transfer(
    c: Checker,
    pool: RpcPool,
    at: str,
    p: Mapping[str, Any],
    tx: Mapping[str, Any],
    receipt: Mapping[str, Any],
) -> None:
    found: tuple[str | None, str | None, int] | None  # from, to, amount
    kind = p["kind"]
    if kind == "erc20":
        found = _erc20(c, at, p, receipt)
    elif kind == "native":
        found = (
            checksum(tx.get("from")),
            checksum(tx.get("to")),
            quantity(tx.get("value", "0x0")),
        )
    elif p.get("attribution") == "balance":
        found = None
        _balance_attributed(c, pool, at, p, tx)
    else:
        found = _internal(c, pool, at, p)
    if found is None:
        return
    sender, recipient, amount = found
    c.check(
        f"{at}.from",
        sender == p["from"],
        f"sent by {sender}",
        f"the transfer is from {sender}, the bundle says {p['from']}",
    )
    c.check(
        f"{at}.to",
        recipient == p["to"],
        f"received by {recipient}",
        f"the transfer is to {recipient}, the bundle says {p['to']}",
    )
    c.check(
        f"{at}.amount_base_units",
        str(amount) == p["amount_base_units"],
        f"{amount} base units",
        f"the transfer moved {amount} base units, the bundle says {p['amount_base_units']}",
    )


def _erc20(
    c: Checker, at: str, p: Mapping[str, Any], receipt: Mapping[str, Any]
) -> tuple[str | None, str | None, int] | None:
    index = p["log_index"]
    log = next(
        (lg for lg in receipt.get("logs") or [] if quantity(lg.get("logIndex")) == index), None
    )
    topics = [str(t).lower() for t in (log or {}).get("topics") or []]
    if not c.check(
        f"{at}.log_index",
        log is not None and len(topics) == 3 and topics[0] == TRANSFER_TOPIC,
        f"Transfer log at index {index}",
        f"the receipt has no Transfer log at index {index}",
    ):
        return None
    assert log is not None
    if not c.check(
        f"{at}.token_address",
        same(log.get("address"), p["token_address"]),
        f"emitted by token {p['token_address']}",
        f"log {index} was emitted by {checksum(log.get('address'))}, the bundle says "
        f"{p['token_address']}",
    ):
        return None
    amount = decode_amount(log.get("data", "0x")) or 0
    return checksum("0x" + topics[1][-40:]), checksum("0x" + topics[2][-40:]), amount


def _internal(
    c: Checker, pool: RpcPool, at: str, p: Mapping[str, Any]
) -> tuple[str | None, str | None, int] | None:
    """The value call to the wallet at trace position ``log_index`` (its rank among the
    transaction's value calls to the wallet, in execution order, as the scanner numbers them)."""
    try:
        tree = pool.call("trace_transaction", [p["tx_hash"]])
    except RpcError as exc:
        raise WatcherError(
            f"cannot check the internal transfer of {p['tx_hash']}: the node has no "
            f"trace_transaction ({exc})"
        ) from exc
    frames = [
        t
        for t in tree or []
        if isinstance(t, dict)
        and t.get("type") == "call"
        and (t.get("action") or {}).get("callType") == "call"
        and t.get("traceAddress")
        and same((t.get("action") or {}).get("to"), p["to"])
        and quantity((t.get("action") or {}).get("value", "0x0")) > 0
    ]
    frames.sort(key=lambda t: list(t["traceAddress"]))
    index = p["log_index"]
    frame = frames[index] if isinstance(index, int) and 0 <= index < len(frames) else None
    path = list(frame["traceAddress"]) if frame else []
    prefixes = {tuple(path[:n]) for n in range(len(path) + 1)}
    failed = frame is not None and any(
        tuple(t.get("traceAddress") or []) in prefixes and t.get("error")
        for t in tree
        if isinstance(t, dict)
    )
    if not c.check(
        f"{at}.log_index",
        frame is not None and not failed,
        f"internal call {index} pays the wallet",
        f"the transaction has no successful internal value call {index} to {p['to']}",
    ):
        return None
    assert frame is not None
    action = frame["action"]
    return checksum(action.get("from")), checksum(action.get("to")), quantity(action["value"])


def _balance_attributed(
    c: Checker, pool: RpcPool, at: str, p: Mapping[str, Any], tx: Mapping[str, Any]
) -> None:
    """An internal payment attributed by balance (no traces when it was found): the recorded
    sender is the contract the transaction called, the only transaction to it in its block;
    over that block the wallet gained and the contract lost at least the amount."""
    block, callee, wallet = int(p["block_number"]), checksum(tx.get("to")), str(p["to"])
    if not c.check(
        f"{at}.from",
        callee is not None and callee == p["from"] and not same(tx.get("from"), wallet),
        f"the transaction calls {callee}, which paid the wallet",
        f"the transaction calls {callee}, the bundle says the payment came from {p['from']}",
    ):
        return
    full, w_after, w_before, c_after, c_before = pool.batch(
        [
            ("eth_getBlockByNumber", [hex(block), True]),
            ("eth_getBalance", [wallet, hex(block)]),
            ("eth_getBalance", [wallet, hex(block - 1)]),
            ("eth_getBalance", [callee, hex(block)]),
            ("eth_getBalance", [callee, hex(block - 1)]),
        ]
    )
    txs = full.get("transactions", []) if isinstance(full, dict) else []
    calls = [t for t in txs if isinstance(t, dict) and same(t.get("to"), callee)]
    c.check(
        f"{at}.tx_hash",
        len(calls) == 1,
        f"the only transaction to {callee} in block {block}",
        f"block {block} holds {len(calls)} transactions to {callee}: the payment cannot be "
        "attributed to one of them",
    )
    amount = int(p["amount_base_units"])
    gained = quantity(w_after) - quantity(w_before)
    lost = quantity(c_before) + quantity(tx.get("value", "0x0")) - quantity(c_after)
    c.check(
        f"{at}.amount_base_units",
        gained >= amount and lost >= amount,
        f"over block {block} the wallet gained {gained} and {callee} paid out {lost} base "
        f"units: at least {amount} (attributed by balance)",
        f"over block {block} the wallet gained {gained} and {callee} paid out {lost} base "
        f"units, less than the {amount} the bundle says",
    )
