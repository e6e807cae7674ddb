"""The floor: the least a watcher must ask a node to find the payments to a wallet.

One ``eth_getLogs`` per LOG_RANGE blocks (the configured tokens' ``Transfer`` to the wallet)
and one ``trace_filter`` per TRACE_RANGE blocks (``toAddress`` = the wallet: top-level and
internal calls carrying value), batched BATCH entries to a POST, then the receipts of the
native hits for their status. No blocks, no database. Only ``requests`` is imported, so that
run as a whole process (``python bench/floor.py URL WALLET FIRST LAST TOKEN...``, printing
the payments as JSON) it starts as fast as a script can; ``bench/cost_run.py`` times it so,
beside ``proofwatch scan`` as a whole process, and calls ``floor_scan`` in process too.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import requests

LOG_RANGE = 2000  # blocks per eth_getLogs
TRACE_RANGE = 300  # blocks per trace_filter (Anvil refuses more)
BATCH = 100  # entries per POST
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


class Batcher:
    """JSON-RPC batches over one requests.Session; answers in request order, errors raise."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self._id = 0

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        entries = []
        for method, params in calls:
            self._id += 1
            entries.append({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        response = self.session.post(self.url, json=entries, timeout=120)
        response.raise_for_status()
        by_id = {a["id"]: a for a in response.json()}
        out = []
        for entry in entries:
            answer = by_id[entry["id"]]
            if answer.get("error") is not None:
                raise RuntimeError(f"{entry['method']}: {answer['error']}")
            out.append(answer["result"])
        return out

    def close(self) -> None:
        self.session.close()


def addr_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


def floor_scan(
    rpc: Any, wallet: str, tokens: Sequence[str], first: int, last: int
) -> Counter[tuple[str, str, int]]:
    """The payments to ``wallet`` in ``first..last`` with the fewest calls: one eth_getLogs per
    LOG_RANGE blocks and one trace_filter per TRACE_RANGE blocks (top-level and internal
    calls to the wallet), batched BATCH to a POST, then the receipts of the native hits for
    their status. No blocks, no database. ``rpc`` has ``batch([(method, params)]) -> results``."""
    calls: list[tuple[str, list[Any]]] = []
    for a in range(first, last + 1, LOG_RANGE):
        flt = {
            "fromBlock": hex(a),
            "toBlock": hex(min(last, a + LOG_RANGE - 1)),
            "address": list(tokens),
            "topics": [TRANSFER_TOPIC, None, addr_topic(wallet)],
        }
        calls.append(("eth_getLogs", [flt]))
    for a in range(first, last + 1, TRACE_RANGE):
        flt = {
            "fromBlock": hex(a),
            "toBlock": hex(min(last, a + TRACE_RANGE - 1)),
            "toAddress": [wallet],
        }
        calls.append(("trace_filter", [flt]))
    results: list[Any] = []
    for start in range(0, len(calls), BATCH):
        results += rpc.batch(calls[start : start + BATCH])
    logs = [lg for r, (m, _) in zip(results, calls, strict=True) if m == "eth_getLogs" for lg in r]
    traces = [t for r, (m, _) in zip(results, calls, strict=True) if m == "trace_filter" for t in r]
    low = wallet.lower()
    hits = [
        t for t in traces
        if t.get("type") == "call" and not t.get("error")
        and t["action"].get("callType", "call") == "call"
        and (t["action"].get("to") or "").lower() == low and int(t["action"]["value"], 16) > 0
    ]  # fmt: skip
    hashes = sorted({t["transactionHash"] for t in hits})
    status: dict[str, int] = {}
    for start in range(0, len(hashes), BATCH):
        part = hashes[start : start + BATCH]
        receipts = rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])
        status.update({h: int(r["status"], 16) for h, r in zip(part, receipts, strict=True)})
    found: Counter[tuple[str, str, int]] = Counter()
    for lg in logs:
        found[("erc20", lg["transactionHash"].lower(), int(lg["data"], 16))] += 1
    for t in hits:
        if status[t["transactionHash"]] == 1:
            kind = "internal" if t["traceAddress"] else "native"
            found[(kind, t["transactionHash"].lower(), int(t["action"]["value"], 16))] += 1
    return found


def main(argv: Sequence[str]) -> int:
    url, wallet, first, last, *tokens = argv
    rpc = Batcher(url)
    found = floor_scan(rpc, wallet, tokens, int(first), int(last))
    rpc.close()
    print(json.dumps([[*key, n] for key, n in found.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
