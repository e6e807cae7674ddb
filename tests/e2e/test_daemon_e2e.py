"""The daemon end to end: a payment on a real Anvil node becomes signed webhooks.

Each test gets its own node (a block a second, ``finalized`` = ``latest - 2``), a demo USDC,
a SQLite file with RET-1 approved and INV-1 issued, real local webhook receivers, and runs
``python -m watcher run`` as a child process. The daemon delivers the outbox every 5 s and
retries a failed delivery 10 s later, then 1 min... (``watcher.notify.backoff``). Every wait
polls a condition with a deadline; every process is stopped, whether it was killed or not.
"""

from __future__ import annotations

import signal

import pytest

from tests.e2e.daemon_harness import (
    SECRET,
    HoldingReceiver,
    Hook,
    Site,
    by_event,
    of_type,
    signature_ok,
)
from tests.support.receivers import Received, free_port

pytestmark = [pytest.mark.anvil, pytest.mark.slow]

RETRY_DEADLINE = 60.0  # first retry ~10-11 s after the failure, then up to a 5 s delivery round


def assert_is_the_stored_event(received: Received, stored: dict[str, str]) -> None:
    """The request carries the outbox row byte for byte, its id in the header, signed."""
    assert received.body == stored["body"].encode()
    assert received.event_id == received.json()["id"] == stored["id"]
    assert signature_ok(SECRET, received), received.headers
    assert received.valid_signature is True


def test_a_payment_gives_exactly_one_signed_cycle_opened(site: Site) -> None:
    """A payment reaches the webhook as exactly one cycle.opened, signed as CONTRACT.md says
    with its id in Proofwatch-Event-Id, and later delivery rounds never send it again."""
    receiver = site.receiver()
    site.configure([Hook(receiver.url())])
    amount = site.issue_first_invoice()
    daemon = site.start_daemon()
    site.wait(lambda: site.heartbeat_of(daemon), "the daemon's heartbeat")
    tx = site.pay(amount)

    (request,) = site.wait(lambda: of_type(receiver.accepted(), "cycle.opened"), "cycle.opened")
    (stored,) = site.events("cycle.opened")
    assert_is_the_stored_event(request, stored)
    data = request.json()["data"]
    assert (data["invoice_id"], data["cycle_id"], data["client"]) == ("INV-1", "CYC-1", "Acme GmbH")
    assert (data["tx_hash"], data["amount_base_units"]) == (tx, str(amount))
    invoice = site.invoice()
    assert (invoice["status"], invoice["cycle_id"]) == ("paid", "CYC-1")

    # Later rounds: nothing left to send, the chain is scanned on, nothing is sent again.
    status = site.wait(
        lambda: (doc := site.status())["outbox"]["pending"] == 0 and doc, "status: 0 pending"
    )
    assert status["outbox"] == {"pending": 0, "dead": 0}
    assert (status["daemon"]["running"], status["daemon"]["pid"]) == (True, daemon.pid)
    cursor = status["chains"][0]["cursor"]

    def new_beat() -> str | None:
        beat = site.heartbeat_of(daemon)
        return beat if beat not in beats else None

    beats = {site.heartbeat_of(daemon)}
    for _ in range(2):  # two more heartbeats: the delivery job runs as often (every 5 s)
        beats.add(site.wait(new_beat, "another heartbeat"))
    (chain,) = site.query("SELECT cursor FROM v_status")
    assert chain["cursor"] > cursor
    assert len(of_type(receiver.requests, "cycle.opened")) == 1
    groups = by_event(receiver.requests)
    assert set(groups) == {e["id"] for e in site.events()}
    assert all(len(requests) == 1 for requests in groups.values()), groups
    assert site.query("SELECT count(*) AS n FROM v_cycles") == [{"n": 1}]
    assert daemon.terminate() == 0


def test_an_event_is_retried_and_arrives_after_the_receiver_comes_back(site: Site) -> None:
    """With the receiver down, cycle.opened's failed attempt is recorded and the status shows it
    pending; the backoff retries it and it arrives, once and signed, after the receiver is back."""
    receiver = site.receiver()
    site.configure([Hook(receiver.url(), events=("cycle.opened",))])
    amount = site.issue_first_invoice()
    receiver.stop()  # connections to its port are refused from now on
    daemon = site.start_daemon()
    site.pay(amount)

    def failed_attempts() -> list[dict[str, object]]:
        deliveries = site.deliveries("cycle.opened")
        return site.attempts(deliveries[0]["id"]) if deliveries else []

    first = site.wait(failed_attempts, "a failed attempt to deliver cycle.opened")[0]
    assert (first["ok"], first["detail"]) == (0, "connection refused")
    assert site.status()["outbox"] == {"pending": 1, "dead": 0}
    receiver.restart()

    (request,) = site.wait(
        lambda: of_type(receiver.accepted(), "cycle.opened"),
        "cycle.opened after the receiver came back",
        timeout=RETRY_DEADLINE,
    )
    (stored,) = site.events("cycle.opened")
    assert_is_the_stored_event(request, stored)
    (delivery,) = site.wait(
        lambda: [d for d in site.deliveries() if d["status"] == "delivered"], "delivered"
    )
    assert delivery["attempts"] == len(site.attempts(delivery["id"]))
    outcomes = [a["ok"] for a in site.attempts(delivery["id"])]
    assert outcomes[0] == 0 and outcomes[-1] == 1 and outcomes.count(1) == 1
    assert [r.json()["type"] for r in receiver.requests] == ["cycle.opened"]
    assert daemon.terminate() == 0


def test_failing_channels_do_not_delay_a_healthy_one(site: Site) -> None:
    """Two webhooks that fail (HTTP 500, connection refused), listed first, do not hold back a
    third: it gets every event on the first attempt, cycle.opened included, while the failing
    ones are still pending and keep being retried."""
    broken = site.receiver()
    broken.fail_with(500)
    healthy = site.receiver()
    refused = f"http://127.0.0.1:{free_port()}/hook"
    site.configure([Hook(broken.url()), Hook(refused), Hook(healthy.url())])
    amount = site.issue_first_invoice()
    daemon = site.start_daemon()
    site.pay(amount)

    site.wait(lambda: of_type(healthy.accepted(), "cycle.opened"), "cycle.opened at the healthy")
    failing = site.deliveries("cycle.opened")[:2]
    assert [(d["channel"], d["status"]) for d in failing] == [
        ("webhook:0", "pending"),
        ("webhook:1", "pending"),
    ]

    def healthy_has_everything() -> bool:
        statuses = [d["status"] for d in site.deliveries(channel="webhook:2")]
        return statuses == ["delivered"] * len(site.events())

    site.wait(healthy_has_everything, "every event delivered to the healthy webhook")
    events = {e["id"]: e for e in site.events()}
    assert set(by_event(healthy.requests)) == set(events)
    for event_id, requests in by_event(healthy.requests).items():
        (request,) = requests
        assert_is_the_stored_event(request, events[event_id])

    # The failing channels keep failing, and are retried: the 500 receiver sees an event again.
    site.wait(
        lambda: any(len(rs) > 1 for rs in by_event(broken.requests).values()),
        "a retry at the failing receiver",
        timeout=RETRY_DEADLINE,
    )
    assert broken.accepted() == [] and {r.status for r in broken.requests} == {500}
    for channel, detail in (("webhook:0", "HTTP 500"), ("webhook:1", "connection refused")):
        deliveries = site.deliveries(channel=channel)
        assert {d["status"] for d in deliveries} == {"pending"}
        tried = [a for d in deliveries for a in site.attempts(d["id"])]
        assert tried and {(a["ok"], a["detail"]) for a in tried} == {(0, detail)}
    healthy_tries = [(d["status"], d["attempts"]) for d in site.deliveries(channel="webhook:2")]
    assert healthy_tries == [("delivered", 1)] * len(events)
    assert all(len(rs) == 1 for rs in by_event(healthy.requests).values())
    assert daemon.terminate() == 0


def test_kill_9_mid_run_then_restart_loses_no_event_and_repeats_are_identical(
    site: Site,
) -> None:
    """SIGKILL right after the payment is detected, and again while a slow receiver holds
    cycle.opened: each restart is accepted (the kill freed the lock), every event arrives, a
    repeat has the same id and body byte for byte, and INV-1 is paid by exactly one cycle."""
    receiver = site.receiver(HoldingReceiver(SECRET, hold="cycle.opened"))
    assert isinstance(receiver, HoldingReceiver)
    site.configure([Hook(receiver.url())])
    amount = site.issue_first_invoice()
    first = site.start_daemon()
    site.wait(lambda: site.heartbeat_of(first), "the first daemon's heartbeat")
    tx = site.pay(amount)
    site.wait(lambda: site.events("payment.detected"), "the payment to be detected")
    assert first.kill9() == -signal.SIGKILL

    second = site.start_daemon()
    site.wait(lambda: site.heartbeat_of(second), "the second daemon to take over")
    site.wait(receiver.holding.is_set, "the receiver to hold cycle.opened")
    assert second.kill9() == -signal.SIGKILL  # mid-delivery: the answer never reaches it
    receiver.release.set()
    (held,) = site.deliveries("cycle.opened")
    assert (held["status"], held["attempts"]) == ("pending", 0)

    third = site.start_daemon()
    site.wait(lambda: site.heartbeat_of(third), "the third daemon to take over")

    def everything_delivered() -> bool:
        events = site.events()
        deliveries = site.deliveries()
        fanned = site.query("SELECT count(*) AS n FROM outbox WHERE NOT fanned_out")
        return (
            fanned == [{"n": 0}]
            and len(deliveries) == len(events)
            and all(d["status"] == "delivered" for d in deliveries)
        )

    site.wait(everything_delivered, "every outbox event delivered")
    events = {e["id"]: e for e in site.events()}
    groups = by_event(receiver.accepted())
    assert set(groups) == set(events)
    for event_id, requests in groups.items():
        for request in requests:
            assert_is_the_stored_event(request, events[event_id])
    (opened,) = [e for e in events.values() if e["type"] == "cycle.opened"]
    assert len(groups[opened["id"]]) >= 2  # held by the killed daemon, then sent again
    (delivery,) = site.deliveries("cycle.opened")
    assert [a["ok"] for a in site.attempts(delivery["id"])] == [1]

    assert sorted(e["type"] for e in events.values()) == [
        "cycle.opened",
        "payment.detected",
        "payment.finalized",
    ]
    assert site.invoice()["status"] == "paid"
    (cycle,) = site.query("SELECT id, funded_by_invoice, proof_tx_hash FROM v_cycles")
    assert cycle == {"id": "CYC-1", "funded_by_invoice": "INV-1", "proof_tx_hash": tx}
    status = site.status()
    assert (status["daemon"]["pid"], status["outbox"]) == (third.pid, {"pending": 0, "dead": 0})
    assert third.terminate() == 0
