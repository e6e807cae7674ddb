"""The optional status listener of ``proofwatch run`` (``[status] listen``): read-only HTTP.

- ``/healthz``: 200 with a JSON body when the daemon's heartbeat is fresh and every chain
  polled successfully within ``[status] stale_seconds``; 503 with the reasons otherwise.
- ``/metrics``: Prometheus text, computed from the database at scrape time (its own
  ``CollectorRegistry``, so nothing global is exported).
- ``/``: an HTML status page of chains, retainers, invoices, cycles and recent payments;
  every value escaped, no JavaScript.

Everything is read through a read-only engine (the operator views), so serving never blocks
the daemon's writes.

Safe behind a proxy (``watcher.runtime.http_guard``): every request's ``Host`` must name the listen
host or one of ``[status] allowed_hosts`` (else 400), and with ``[status] token`` set the page
and ``/metrics`` need the token (else 401 with a ``WWW-Authenticate`` challenge); ``/healthz``
stays open for health checkers.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from watcher.errors import WatcherError
from watcher.runtime.http_guard import OPEN_PATHS, HostCheck, token_matches
from watcher.runtime.status import Row, health_problems, parse_ts, rows, status_document
from watcher.settings import Settings

log = structlog.get_logger("watcher.http")

#: Per chain: (consecutive failed polls, failed polls since the daemon started).
PollFailures = Callable[[], Mapping[str, tuple[int, int]]]

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` or ``"[::1]:9464"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise WatcherError(f"status listen address {listen!r} must be host:port")
    return host, int(port)


class StatusServer:
    """``/healthz``, ``/metrics`` and ``/`` served from a daemon thread."""

    def __init__(
        self,
        listen: str,
        engine: Engine,
        settings: Settings,
        now: Callable[[], datetime],
        *,
        poll_failures: PollFailures | None = None,
    ) -> None:
        self.listen = listen
        self.engine = engine
        self.settings = settings
        self.now = now
        self.poll_failures = poll_failures
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(self))
        self.url = ""
        self.token = settings.status.token
        self.hosts = HostCheck(parse_listen(listen)[0], settings.status.allowed_hosts)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> StatusServer:
        host, port = parse_listen(self.listen)
        owner = self

        class Handler(_Handler):
            server_owner = owner

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self._server = Server((host, port), Handler)
        except OSError as exc:
            raise WatcherError(f"cannot listen on {self.listen}: {exc.strerror}") from exc
        bound_port = self._server.server_address[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="proofwatch-http",
            daemon=True,
        )
        self._thread.start()
        log.info("http.listening", url=self.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- the three answers --------------------------------------------------------------------

    def healthz(self) -> tuple[int, dict[str, Any]]:
        now = self.now()
        document = status_document(self.engine, self.settings, now)
        reasons = health_problems(document, self.settings, now)
        body = {
            "ok": not reasons,
            "reasons": reasons,
            "checked_at": document["generated_at"],
            "stale_seconds": self.settings.status.stale_seconds,
            "daemon": document["daemon"],
            "chains": [
                {
                    k: c[k]
                    for k in ("name", "last_ok_at", "rpc_ok", "degraded", "lag_blocks", "halted_by")
                }
                for c in document["chains"]
            ],
        }
        return (503 if reasons else 200), body

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def page(self) -> str:
        return render_page(self.engine, self.settings, self.now())


class _Handler(BaseHTTPRequestHandler):
    server_owner: StatusServer
    protocol_version = "HTTP/1.1"
    server_version = "proofwatch"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        owner = self.server_owner
        path = self.path.split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        if not owner.hosts.allows(self.headers.get("Host")):
            log.warning("http.host_refused", host=str(self.headers.get("Host"))[:100], path=path)
            self._reply(400, text, b"host not allowed\n", send_body)
            return
        if (
            owner.token is not None
            and path not in OPEN_PATHS
            and not token_matches(owner.token, self.headers.get("Authorization"))
        ):
            log.info("http.unauthorized", path=path, client=self.client_address[0])
            challenges = [
                ("WWW-Authenticate", 'Bearer realm="proofwatch"'),
                ("WWW-Authenticate", 'Basic realm="proofwatch", charset="UTF-8"'),  # browsers
            ]
            self._reply(401, text, b"token required\n", send_body, challenges)
            return
        try:
            if path == "/healthz":
                status, body = owner.healthz()
                self._reply(status, "application/json", json.dumps(body).encode(), send_body)
            elif path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, owner.metrics(), send_body)
            elif path in ("/", "/index.html"):
                html = owner.page().encode()
                self._reply(200, "text/html; charset=utf-8", html, send_body)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n", send_body)
        except Exception as exc:  # a database error must not kill the listener
            log.error("http.failed", path=path, error=f"{type(exc).__name__}: {exc}")
            self._reply(500, "text/plain; charset=utf-8", b"status unavailable\n", send_body)

    def _reply(
        self,
        status: int,
        content_type: str,
        body: bytes,
        send_body: bool,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in [*_SECURITY_HEADERS.items(), *extra]:
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http.request", request=self.requestline, client=self.client_address[0])


# --- /metrics --------------------------------------------------------------------------------


class _StatusCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server

    def collect(self) -> Iterable[Metric]:
        srv = self.server
        doc = status_document(srv.engine, srv.settings, srv.now())
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
        if srv.poll_failures is not None:
            failures = srv.poll_failures()
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


# --- / ---------------------------------------------------------------------------------------

_STYLE = """
:root { --ink:#1c2430; --muted:#5f6b7a; --line:#e3e7ec; --bg:#f6f7f9; --ok:#1a7f37;
        --warn:#9a6700; --bad:#cf222e; --info:#0969da; --quiet:#6e7781; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 48px; }
header { display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; margin-bottom:18px; }
h1 { font-size:22px; margin:0; letter-spacing:-0.01em; }
h2 { font-size:15px; margin:28px 0 8px; text-transform:uppercase; letter-spacing:.06em;
     color:var(--muted); }
h2 small { text-transform:none; letter-spacing:0; font-weight:normal; }
.sub { color:var(--muted); }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card b { display:block; font-size:22px; font-variant-numeric:tabular-nums; }
.card span { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.05em; }
table { width:100%; border-collapse:collapse; background:#fff; border:1px solid var(--line);
        border-radius:8px; overflow:hidden; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line);
         vertical-align:top; }
th { background:#fafbfc; font-size:12px; color:var(--muted); font-weight:600; }
tr:last-child td { border-bottom:none; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.id, .nowrap { white-space:nowrap; }
code { font:12.5px ui-monospace,"DejaVu Sans Mono",monospace; }
a { color:var(--info); text-decoration:none; }
.pill { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px;
        font-weight:600; border:1px solid currentColor; white-space:nowrap; }
.ok { color:var(--ok); } .warn { color:var(--warn); } .bad { color:var(--bad); }
.info { color:var(--info); } .quiet { color:var(--quiet); }
.err { color:var(--bad); font-size:12px; }
.reasons { margin:-6px 0 16px; padding-left:18px; color:var(--bad); }
.empty { color:var(--muted); background:#fff; border:1px dashed var(--line); border-radius:8px;
         padding:12px 14px; }
footer { margin-top:32px; color:var(--muted); font-size:12px; }
"""

_TONE = {
    "paid": "ok",
    "paid_late": "warn",
    "open": "info",
    "pending": "warn",
    "underpaid": "bad",
    "expired": "bad",
    "needs_review": "bad",
    "void": "quiet",
    "approved": "ok",
    "active": "ok",
    "draft": "quiet",
    "lapsed": "bad",
    "ended": "quiet",
    "closed": "quiet",
    "final": "ok",
    "seen": "warn",
    "orphaned": "bad",
}


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value), quote=True)


def _pill(text: Any, tone: str | None = None) -> str:
    label = str(text).replace("_", " ")
    return f'<span class="pill {tone or _TONE.get(str(text), "quiet")}">{_e(label)}</span>'


def _when(value: str | None) -> str:
    """A view timestamp as ``2026-11-21 15:40`` (UTC), the full value in the tooltip."""
    if not value:
        return '<span class="quiet">—</span>'
    return f'<span class="nowrap" title="{_e(value)}">{_e(value[:16].replace("T", " "))}</span>'


def _short(value: str | None, keep: int = 10) -> str:
    if not value:
        return ""
    shown = value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-6:]}"
    return f'<code title="{_e(value)}">{_e(shown)}</code>'


_NUMERIC = {"head", "final", "cursor", "lag", "amount", "month", "block", "monthly"}


def _table(headers: Iterable[str], body: list[str], empty: str) -> str:
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th{' class=num' if h in _NUMERIC else ''}>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _row(*cells: str) -> str:
    return "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"


def _num(value: Any) -> str:
    return f'<td class="num">{_e(value) if value is not None else "—"}</td>'


def _id(value: Any) -> str:
    return f'<td class="id"><b>{_e(value)}</b></td>'


def render_page(engine: Engine, settings: Settings, now: datetime) -> str:
    """The HTML status page: chains, retainers, invoices, cycles, recent payments."""
    doc = status_document(engine, settings, now)
    reasons = health_problems(doc, settings, now)
    explorers = {c.name: c.explorer_url.rstrip("/") for c in settings.chains if c.explorer_url}
    retainers = rows(
        engine,
        "SELECT id, client, chain, asset, monthly, status, approved_by, start_at "
        "FROM v_retainers ORDER BY CAST(substr(id, 5) AS INTEGER)",
    )
    clients = {r["id"]: r["client"] for r in retainers}
    invoices = rows(
        engine,
        "SELECT id, retainer_id, client, kind, period_index, chain, asset, amount, paid_amount, "
        "status, issued_at, due_at, paid_at, cycle_id FROM v_invoices "
        "ORDER BY CAST(substr(id, 5) AS INTEGER) DESC LIMIT 50",
    )
    cycles = rows(
        engine,
        "SELECT c.*, i.chain AS chain FROM v_cycles c "
        "LEFT JOIN v_invoices i ON i.id = c.funded_by_invoice "
        "ORDER BY c.starts_at DESC, c.period_index DESC LIMIT 50",
    )
    payments = rows(
        engine,
        'SELECT chain, tx_hash, log_index, block_number, "from", amount, asset, status, '
        "invoice_id, detected_at FROM v_payments "
        "ORDER BY block_number DESC, log_index DESC LIMIT 20",
    )

    def tx_link(chain: str | None, tx: str | None) -> str:
        base = explorers.get(chain or "")
        return f'<a href="{_e(f"{base}/tx/{tx}")}">{_short(tx)}</a>' if base and tx else _short(tx)

    daemon = doc["daemon"]
    if daemon["running"]:
        daemon_html = f"{_pill('running', 'ok')} pid {_e(daemon['pid'])} on {_e(daemon['host'])}"
    else:
        daemon_html = _pill("not running", "bad")
    daemon_html += f' <span class="sub">heartbeat {_when(daemon["last_heartbeat_at"])}</span>'
    health = _pill("healthy", "ok") if not reasons else _pill("unhealthy", "bad")
    warnings = [
        *reasons,
        *(
            f"notification channel {c['channel']} disabled since {c['disabled_at']} "
            f"({c['reason']} on {c['event_id']}), {c['pending']} pending: "
            f"proofwatch notify enable {c['channel']}"
            for c in doc["disabled_channels"]
        ),
    ]
    reasons_html = (
        '<ul class="reasons">' + "".join(f"<li>{_e(r)}</li>" for r in warnings) + "</ul>"
        if warnings
        else ""
    )

    chain_rows = []
    for c in doc["chains"]:
        rpc = {True: _pill("ok", "ok"), False: _pill("failing", "bad")}.get(
            c["rpc_ok"], _pill("not polled", "quiet")
        )
        if c["degraded"]:
            rpc += " " + _pill("degraded", "bad")
        if c["halted_by"]:
            rpc += " " + _pill(f"halted by {c['halted_by']}", "bad")
        error = f'<div class="err">{_e(c["last_error"])}</div>' if c["last_error"] else ""
        chain_rows.append(
            _row(
                f"<td class=id><b>{_e(c['name'])}</b>"
                f"<div class='sub'>chain id {_e(c['chain_id'])}</div></td>",
                _num(c["head"]),
                _num(c["final_block"]),
                _num(c["cursor"]),
                _num(c["lag_blocks"]),
                rpc + error,
                _when(c["last_poll_at"]),
                _when(c["last_ok_at"]),
            )
        )
    counts = doc["invoices"]
    cards = [
        (sum(counts.values()), "invoices"),
        (counts.get("open", 0) + counts.get("pending", 0), "awaiting payment"),
        (counts.get("paid", 0) + counts.get("paid_late", 0), "paid"),
        (counts.get("needs_review", 0) + counts.get("underpaid", 0), "need attention"),
        (doc["outbox"]["pending"], "notifications queued"),
        (doc["outbox"]["dead"], "notifications dead"),
    ]
    cards_html = "".join(
        f'<div class="card"><b>{n}</b><span>{_e(t)}</span></div>' for n, t in cards
    )

    retainer_rows = [
        _row(
            _id(r["id"]),
            _e(r["client"]),
            f'<td class="num">{_e(r["monthly"])} {_e(r["asset"])}'
            f"<div class='sub'>on {_e(r['chain'])}</div></td>",
            _pill(r["status"]),
            _e(r["approved_by"] or "—"),
            _when(r["start_at"]),
        )
        for r in retainers
    ]
    invoice_rows = [
        _row(
            _id(i["id"]),
            f"{_e(i['client'])}<div class='sub'>{_e(i['retainer_id'])}</div>",
            _e(i["kind"].replace("_", " "))
            + (f" · month {_e(i['period_index'])}" if i["period_index"] else ""),
            f'<td class="num">{_e(i["amount"])} {_e(i["asset"])}</td>',
            _pill(i["status"]),
            _when(i["issued_at"]),
            _when(i["due_at"]),
            _when(i["paid_at"]),
            f'<td class="id">{_e(i["cycle_id"] or "")}</td>',
        )
        for i in invoices
    ]
    cycle_rows = [
        _row(
            _id(c["id"]),
            f"{_e(clients.get(c['retainer_id'], ''))}<div class='sub'>{_e(c['retainer_id'])}</div>",
            _num(c["period_index"]),
            _when(c["starts_at"]),
            _when(c["ends_at"]),
            _pill(c["status"], "ok" if c["status"] == "open" else None),
            _e(c["funded_by_invoice"] or ""),
            tx_link(c["chain"], c["proof_tx_hash"]),
        )
        for c in cycles
    ]
    payment_rows = [
        _row(
            _e(p["chain"]),
            _num(p["block_number"]),
            tx_link(p["chain"], p["tx_hash"])
            + (
                "" if p["log_index"] is None else f" <span class='sub'>#{_e(p['log_index'])}</span>"
            ),
            _short(p["from"], 8),
            f'<td class="num">{_e(p["amount"])} {_e(p["asset"])}</td>',
            _pill(p["status"]),
            _e(p["invoice_id"]) if p["invoice_id"] else '<span class="warn">unassigned</span>',
            _when(p["detected_at"]),
        )
        for p in payments
    ]
    sections = [
        ("Chains", "", ["chain", "head", "final", "cursor", "lag", "RPC", "last poll", "last ok"],
         chain_rows, "No chain configured."),
        ("Retainers", f"{len(retainers)}", ["id", "client", "monthly", "status", "approved by",
         "start"], retainer_rows, "No retainer yet."),
        ("Invoices", "latest 50", ["id", "client", "kind", "amount", "status", "issued", "due",
         "paid", "cycle"], invoice_rows, "No invoice yet."),
        ("Cycles", "funded months, latest 50", ["id", "client", "month", "starts", "ends",
         "status", "invoice", "proof tx"], cycle_rows, "No month funded yet."),
        ("Recent payments", "latest 20 inflows", ["chain", "block", "tx", "from", "amount",
         "status", "invoice", "seen"], payment_rows, "No payment seen yet."),
    ]  # fmt: skip
    body = "".join(
        f"<h2>{_e(title)} <small>{_e(note)}</small></h2>{_table(heads, content, empty)}"
        for title, note, heads, content, empty in sections
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30">
<title>proofwatch status</title>
<style>{_STYLE}</style></head>
<body><main>
<header><h1>proofwatch</h1>{health}<span>{daemon_html}</span></header>
{reasons_html}
<div class="cards">{cards_html}</div>
{body}
<footer>Read-only view generated {_when(doc["generated_at"])} · watch-only: this service holds
no key and never moves funds · refreshes every 30 s ·
<a href="/metrics">metrics</a> · <a href="/healthz">healthz</a></footer>
</main></body></html>
"""


__all__ = ["PollFailures", "Row", "StatusServer", "parse_listen", "render_page"]
