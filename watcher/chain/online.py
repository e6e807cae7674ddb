"""Checks that need the nodes: chain ids and token decimals (``config check --online``)."""

from __future__ import annotations

from typing import Any

from watcher.chain.rpc import RpcPool
from watcher.errors import ConfigError, RpcError, WatcherError
from watcher.redact import redact_url
from watcher.settings import ChainSettings, Settings

DECIMALS_SELECTOR = "0x313ce567"  # decimals()


def make_pool(chain: ChainSettings) -> RpcPool:
    return RpcPool(
        chain.rpc_urls,
        chain=chain.name,
        expected_chain_id=chain.chain_id,
        timeout=chain.rpc_timeout,
        max_batch=chain.max_batch,
    )


def read_decimals(pool: RpcPool, token: str) -> int:
    """``decimals()`` of an ERC-20 contract, read on chain."""
    raw = pool.call("eth_call", [{"to": token, "data": DECIMALS_SELECTOR}, "latest"])
    if not isinstance(raw, str) or len(raw) < 3:
        raise RpcError(f"token {token} answered decimals() with nothing: is it a token contract?")
    return int(raw, 16)


def check_online(settings: Settings) -> list[dict[str, Any]]:
    """Every RPC URL's chain id and every token's decimals; all problems raised at once."""
    problems: list[str] = []  # the config disagrees with the chain: exit 2
    unreachable: list[str] = []  # could not ask: exit 1
    report: list[dict[str, Any]] = []
    for i, chain in enumerate(settings.chains):
        entry: dict[str, Any] = {"name": chain.name, "chain_id": chain.chain_id, "rpc": []}
        for j, url in enumerate(chain.rpc_urls):
            pool = RpcPool([url], chain=chain.name, timeout=chain.rpc_timeout, max_attempts=2)
            try:
                got = int(pool.call("eth_chainId"), 16)
            except RpcError as exc:
                unreachable.append(f"chains[{i}].rpc_urls[{j}]: unreachable: {exc}")
                entry["rpc"].append({"url": redact_url(url), "ok": False})
                continue
            if got != chain.chain_id:
                problems.append(
                    f"chains[{i}].rpc_urls[{j}]: node is chain {got}, config says {chain.chain_id}"
                )
            entry["rpc"].append(
                {"url": redact_url(url), "ok": got == chain.chain_id, "chain_id": got}
            )
        tokens: list[dict[str, Any]] = []
        entry["tokens"] = tokens
        report.append(entry)
        if not any(r.get("ok") for r in entry["rpc"]):
            continue  # decimals on an unreachable node or another chain mean nothing
        pool = make_pool(chain)
        for k, token in enumerate(chain.tokens):
            try:
                decimals = read_decimals(pool, token.address)
            except RpcError as exc:
                problems.append(f"chains[{i}].tokens[{k}].address: decimals() failed: {exc}")
                continue
            if decimals != token.decimals:
                problems.append(
                    f"chains[{i}].tokens[{k}].decimals: {token.decimals} in config, "
                    f"{decimals} on chain for {token.symbol}"
                )
            tokens.append({"symbol": token.symbol, "address": token.address, "decimals": decimals})
    if problems:
        raise ConfigError(problems + unreachable)
    if unreachable:
        raise WatcherError("; ".join(unreachable))
    return report
