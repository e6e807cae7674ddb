"""The daemon through the fault-injecting proxy, with and without a second clean URL: a node
that falls behind, a ``finalized`` tag that moves backwards and empty ``eth_getLogs`` answers
while a payment is seen and settled; exactly one cycle.opened arrives, nothing is orphaned or
violated, and the payment is one final transfer."""

from __future__ import annotations

import pytest

from tests.e2e.daemon_harness import Hook, Site, of_type
from tests.support.rpcproxy import RpcProxy

pytestmark = [pytest.mark.anvil, pytest.mark.slow]


@pytest.mark.parametrize("second_url", [False, True], ids=["one-url", "second-clean-url"])
def test_daemon_through_a_lagging_proxy_settles_once_without_false_alarms(
    site: Site, second_url: bool
) -> None:
    """A payment seen just before the only (or first) URL falls 5 blocks behind is neither
    orphaned nor a violation; it is final and opens exactly one month once the faults stop,
    or during them when a second clean URL can take over."""
    receiver = site.receiver()
    with RpcProxy(str(site.node.url)) as proxy:
        urls = [proxy.url] + ([str(site.node.url)] if second_url else [])
        site.configure([Hook(receiver.url())], rpc_urls=urls)
        amount = site.issue_first_invoice()
        daemon = site.start_daemon()
        site.wait(lambda: site.heartbeat_of(daemon), "the daemon's heartbeat")

        proxy.stale_logs_next(1)  # the first look at the payment's block finds no logs
        tx = site.pay(amount)
        site.wait(lambda: site.query("SELECT status FROM transfers"), "the payment is seen")
        proxy.lag_blocks = 5
        proxy.finalized_lag = 3
        if second_url:  # the clean URL takes over: the month is funded during the lag
            site.wait(lambda: of_type(receiver.accepted(), "cycle.opened"), "cycle.opened")
        else:
            posts = proxy.posts
            site.wait(lambda: proxy.posts >= posts + 10, "ten requests to the lagging URL")
        assert site.events("payment.orphaned") == []
        assert site.events("watcher.finality_violation") == []
        proxy.clear_faults()

        site.wait(lambda: of_type(receiver.accepted(), "cycle.opened"), "cycle.opened")
        rows = site.query("SELECT tx_hash, status FROM transfers")
        assert daemon.terminate() == 0

    assert rows == [{"tx_hash": tx, "status": "final"}]
    assert len(of_type(receiver.requests, "cycle.opened")) == 1
    for alarm in ("payment.orphaned", "watcher.finality_violation", "watcher.unexplained_balance"):
        assert site.events(alarm) == [], alarm
    assert site.invoice()["status"] == "paid"
