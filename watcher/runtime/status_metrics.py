"""``/metrics`` of the status listener: Prometheus families computed from the status
document at scrape time, registered in the listener's own ``CollectorRegistry``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watcher.runtime.status import parse_ts

#: Per chain: (consecutive failed polls, failed polls since the daemon started).
PollFailures = Callable[[], Mapping[str, tuple[int, int]]]


class StatusCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(
        self, document: Callable[[], dict[str, Any]], poll_failures: PollFailures | None = None
    ) -> None:
        self.document = document  # the status document, read afresh at each scrape
        self.poll_failures = poll_failures

    def collect(self) -> Iterable[Metric]:
        doc = self.document()
        per_chain = {
            "head": ("proofwatch_chain_head_block", "Latest block the chain's node reported."),
            "final_block": ("proofwatch_chain_final_block", "Latest final block."),
            "cursor": ("proofwatch_chain_cursor_block", "Last block fully scanned."),
            "lag_blocks": ("proofwatch_chain_lag_blocks", "Head minus cursor, in blocks."),
        }
        for key, (name, doc_text) in per_chain.items():
            family = GaugeMetricFamily(name, doc_text, labels=["chain"])
            for chain in doc["chains"]:
                if chain[key] is not None:
                    family.add_metric([chain["name"]], chain[key])
            yield family
        rpc_ok = GaugeMetricFamily(
            "proofwatch_chain_rpc_ok", "1 when the last poll reached the node.", labels=["chain"]
        )
        degraded = GaugeMetricFamily(
            "proofwatch_chain_degraded", "1 while the chain is degraded.", labels=["chain"]
        )
        halted = GaugeMetricFamily(
            "proofwatch_chain_halted",
            "1 while a finality violation halts the chain (until chain resume).",
            labels=["chain"],
        )
        last_ok = GaugeMetricFamily(
            "proofwatch_chain_last_ok_timestamp_seconds",
            "Unix time of the last successful poll.",
            labels=["chain"],
        )
        for chain in doc["chains"]:
            labels = [chain["name"]]
            if chain["rpc_ok"] is not None:
                rpc_ok.add_metric(labels, 1 if chain["rpc_ok"] else 0)
            degraded.add_metric(labels, 1 if chain["degraded"] else 0)
            halted.add_metric(labels, 1 if chain["halted_by"] else 0)
            when = parse_ts(chain["last_ok_at"])
            if when is not None:
                last_ok.add_metric(labels, when.timestamp())
        yield from (rpc_ok, degraded, halted, last_ok)
        if self.poll_failures is not None:
            failures = self.poll_failures()
            consecutive = GaugeMetricFamily(
                "proofwatch_chain_consecutive_poll_failures",
                "Failed polls in a row (0 after a success).",
                labels=["chain"],
            )
            total = CounterMetricFamily(
                "proofwatch_chain_poll_failures",
                "Failed polls since the daemon started.",
                labels=["chain"],
            )
            for name, (now_failing, ever) in sorted(failures.items()):
                consecutive.add_metric([name], now_failing)
                total.add_metric([name], ever)
            yield from (consecutive, total)
        off = GaugeMetricFamily(
            "proofwatch_channel_disabled",
            "1 for each notification channel disabled by a 410 Gone answer.",
            labels=["channel"],
        )
        for channel in doc["disabled_channels"]:
            off.add_metric([channel["channel"]], 1)
        yield off
        for key in ("pending", "dead"):
            yield GaugeMetricFamily(
                f"proofwatch_outbox_{key}",
                f"Event deliveries {'waiting or retrying' if key == 'pending' else 'given up'}.",
                value=doc["outbox"][key],
            )
        invoices = GaugeMetricFamily(
            "proofwatch_invoices", "Invoices by status.", labels=["status"]
        )
        for status, count in doc["invoices"].items():
            invoices.add_metric([status], count)
        yield invoices
        daemon = doc["daemon"]
        yield GaugeMetricFamily(
            "proofwatch_daemon_up", "1 while the heartbeat is fresh.", value=int(daemon["running"])
        )
        beat = parse_ts(daemon["last_heartbeat_at"])
        if beat is not None:
            yield GaugeMetricFamily(
                "proofwatch_daemon_last_heartbeat_timestamp_seconds",
                "Unix time of the daemon's last heartbeat.",
                value=beat.timestamp(),
            )
