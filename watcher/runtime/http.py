"""The optional status listener of ``proofwatch run`` (``[status] listen``): read-only HTTP.

- ``/healthz``: 200 with a JSON body when the daemon's heartbeat is fresh and every chain
  polled successfully within ``[status] stale_seconds``; 503 with the reasons otherwise.
- ``/metrics``: Prometheus text, computed from the database at scrape time (its own
  ``CollectorRegistry``, so nothing global is exported; families in
  ``watcher.runtime.status_metrics``).
- ``/``: an HTML status page of chains, retainers, invoices, cycles and recent payments;
  every value escaped, no JavaScript (``watcher.runtime.status_page``, ``templates/status.html``).

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
from collections.abc import Callable, Iterable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.engine import Engine

from watcher.errors import WatcherError
from watcher.runtime.http_guard import OPEN_PATHS, HostCheck, token_matches
from watcher.runtime.status import Row, health_problems, status_document
from watcher.runtime.status_metrics import PollFailures, StatusCollector
from watcher.runtime.status_page import render_page
from watcher.settings import Settings

log = structlog.get_logger("watcher.http")

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
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(self.document, poll_failures))
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

    def document(self) -> dict[str, Any]:
        """The status document, read now."""
        return status_document(self.engine, self.settings, self.now())

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


__all__ = ["PollFailures", "Row", "StatusServer", "parse_listen", "render_page"]
