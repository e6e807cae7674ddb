"""`proofwatch tick` through the fault-injecting proxy, with and without a second clean URL: a
fault in every round (429 with Retry-After, 502, malformed JSON, a batch entry missing, a
delay past the timeout, a dropped connection, a head 6 blocks behind, ``finalized`` moving
backwards, ``[]`` for ``eth_getLogs``) while payments arrive; once the faults stop every
payment is found exactly once and every invoice paid once, with no false final, orphan,
violation or unexplained balance, and the cursor at the head."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.e2e.chain_harness import (
    RPC_VAR,
    T0,
    Chain,
    Workspace,
    usdc,
)
from tests.support.rpcproxy import RpcProxy

pytestmark = pytest.mark.anvil

T1 = "2026-03-03T10:00:00Z"
KEY = "SECRETKEY123"


@pytest.fixture
def proxy(chain: Chain) -> Iterator[RpcProxy]:
    """The fault proxy in front of the node, faults off."""
    with RpcProxy(chain.node.url or "") as p:
        yield p


def through_proxy(ws: Workspace, proxy: RpcProxy, second: str | None) -> None:
    """Point the workspace at the proxy (a key in its path), plus ``second`` if given; a
    one-second RPC timeout so a stalled answer is a timeout."""
    urls = f'"${{{RPC_VAR}}}"' + (f', "${{{RPC_VAR}_2}}"' if second else "")
    text = ws.config.read_text().replace(
        f'rpc_urls = ["${{{RPC_VAR}}}"]', f"rpc_urls = [{urls}]\nrpc_timeout = 1"
    )
    assert f"rpc_urls = [{urls}]" in text
    ws.config.write_text(text)
    env = f"{RPC_VAR}={proxy.url}/v2/{KEY}\n" + (f"{RPC_VAR}_2={second}\n" if second else "")
    (ws.root / ".env").write_text(env)


def _drop_connections(proxy: RpcProxy) -> None:
    proxy.down_mode, proxy.down = "drop", True


def _lag(proxy: RpcProxy) -> None:
    proxy.lag_blocks = 6


def _finalized_backwards(proxy: RpcProxy) -> None:
    proxy.finalized_lag = 4


FAULTS: list[tuple[str, Callable[[RpcProxy], None]]] = [
    ("429 with Retry-After", lambda p: p.fail_next(2, 429, retry_after=1)),
    ("502", lambda p: p.fail_next(2, 502)),
    ("malformed JSON", lambda p: p.malformed_next(2)),
    ("a batch entry missing", lambda p: p.drop_entry_next(2)),
    ("a delay past the timeout", lambda p: p.stall_next(1, 1.5)),
    ("a dropped connection", _drop_connections),
    ("a head 6 blocks behind", _lag),
    ("finalized moving backwards", _finalized_backwards),
    ("[] for eth_getLogs", lambda p: p.stale_logs_next(1)),
]
# Payments made in the round of a fault (by its index), beside the two before the first.
PAY_IN_ROUND = {3: "inv2", 6: "eth-during-lag", 7: "dai", 8: "usdc-during-empty-logs"}


@pytest.mark.parametrize("second_url", [False, True], ids=["one-url", "second-clean-url"])
def test_tick_through_every_fault_finds_each_payment_once(
    chain: Chain, template: Workspace, tmp_path: Path, proxy: RpcProxy, second_url: bool
) -> None:
    """Payments arriving while the proxy misbehaves are each found once and pay their invoices
    once; no tick crashes or leaks the key, nothing is falsely final, orphaned or violated."""
    chain.reset()
    ws = template.copy(tmp_path / "ws")
    through_proxy(ws, proxy, chain.node.url if second_url else None)
    results: list[CompletedProcess[str]] = [ws.run("tick", "--json", now=T0)]
    chain.at(T1)  # the payments are mined when the ticks below say it is
    sent = {
        "inv1": chain.pay(chain.payer, usdc("1500.000001")),
        "eth": chain.pay_eth(chain.stranger, 10**15),
    }
    pay: dict[str, Callable[[], str]] = {
        "inv2": lambda: chain.pay(chain.payer2, usdc("900.000001")),
        "eth-during-lag": lambda: chain.pay_eth(chain.stranger, 2 * 10**15),
        "dai": lambda: chain.pay(chain.stranger, 7 * 10**18, token=chain.dai),
        "usdc-during-empty-logs": lambda: chain.pay(chain.stranger, usdc("12.5")),
    }
    for i, (name, fault) in enumerate(FAULTS):
        fault(proxy)
        if i in PAY_IN_ROUND:
            sent[PAY_IN_ROUND[i]] = pay[PAY_IN_ROUND[i]]()
        chain.mine(1)
        before = proxy.posts
        results.append(ws.run("tick", "--json", now=T1))
        proxy.clear_faults()
        assert proxy.posts > before, name
    chain.finalize()
    results += [ws.run("tick", "--json", now=T1), ws.run("tick", "--json", now=T1)]

    for result in results:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert KEY not in result.stderr + result.stdout
        assert result.returncode in (0, 1), result.stderr[-2000:]
    assert results[-1].returncode == 0, results[-1].stderr[-2000:]
    payments = ws.json("transfers")
    assert sorted(p["tx_hash"] for p in payments) == sorted(sent.values())
    assert {p["status"] for p in payments} == {"final"}
    assert ws.status_of("INV-1") == "paid" and ws.status_of("INV-2") == "paid"
    assert len(ws.events("cycle.opened")) == 2
    types = ws.event_types()
    for alarm in ("payment.orphaned", "watcher.finality_violation", "watcher.unexplained_balance"):
        assert alarm not in types, (alarm, types)
    (status,) = ws.view("v_status")
    assert status["cursor"] == chain.node.block_number()
