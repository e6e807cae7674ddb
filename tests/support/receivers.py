"""Real local receivers for notification tests: an HTTP webhook receiver and an SMTP server.

``WebhookReceiver`` is a ``ThreadingHTTPServer`` on 127.0.0.1 that records every request
(headers, raw body, whether its ``Proofwatch-Signature`` verifies with the shared secret and,
for a ``whsec_`` secret, whether the ``standardwebhooks`` library accepts it) before
answering, so a request is recorded by the time the sender has its answer. It counts the
requests of one event in flight at once (``max_in_flight``: 1 unless two senders delivered
the same event at the same time), and may take ``latency`` seconds to answer, like a real
receiver over a network. It can answer errors
for a while, refuse one event, or be stopped (connection refused) and restarted on its port.

``SmtpServer`` wraps ``aiosmtpd.controller.Controller`` on a free port and collects messages,
optionally requiring a username and password (AUTH over plain SMTP, for local tests only).

``wait_for`` polls a condition until a deadline: tests wait on conditions, never on time.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from standardwebhooks import Webhook, WebhookVerificationError

from tests.support.anvil import free_port
from tests.support.service import Service
from watcher.notify.webhook import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy (returned) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(interval)


# --- webhooks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request the receiver saw, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    valid_signature: bool | None  # None when the receiver has no secret
    status: int
    at: datetime
    standard_valid: bool | None = None  # standardwebhooks' verdict; None unless whsec_ secret

    @property
    def event_id(self) -> str | None:
        return self.headers.get(EVENT_ID_HEADER)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Behaviour:
    fail_status: int | None = None
    fail_remaining: int | None = None  # None = until cleared
    failing_events: dict[str, int] = field(default_factory=dict)


class WebhookReceiver(Service):
    """A webhook receiver on 127.0.0.1 that verifies signatures; start/stop or ``with``."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        port: int | None = None,
        ok_status: int = 200,
        tolerance: timedelta = timedelta(minutes=5),
        latency: float = 0.0,
    ) -> None:
        self.secret = secret
        self.latency = latency
        self._in_flight: dict[str, int] = {}
        self._max_in_flight: dict[str, int] = {}
        self.port = port or free_port()
        self.ok_status = ok_status
        self.tolerance = tolerance
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._behaviour = _Behaviour()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how fast stop() returns
            name=f"webhook-receiver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections to the port are refused."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def restart(self) -> Self:
        """Stop if running, then listen again on the same port."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # behaviour

    def fail_with(self, status: int, times: int | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (every request if None)."""
        with self._lock:
            self._behaviour.fail_status = status
            self._behaviour.fail_remaining = times

    def fail_event(self, event_id: str, status: int = 500) -> None:
        """Always answer ``status`` to deliveries of one event (a "poisoned" event)."""
        with self._lock:
            self._behaviour.failing_events[event_id] = status

    def recover(self) -> None:
        """Answer every request normally again."""
        with self._lock:
            self._behaviour = _Behaviour()

    # what was received

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def accepted(self) -> list[Received]:
        """The requests answered with a 2xx, in arrival order."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def max_in_flight(self) -> dict[str, int]:
        """Per event id: the most requests of it the receiver was handling at one time."""
        with self._lock:
            return dict(self._max_in_flight)

    def _enter(self, event_id: str) -> None:
        with self._lock:
            self._in_flight[event_id] = self._in_flight.get(event_id, 0) + 1
            most = max(self._max_in_flight.get(event_id, 0), self._in_flight[event_id])
            self._max_in_flight[event_id] = most

    def _leave(self, event_id: str) -> None:
        with self._lock:
            self._in_flight[event_id] -= 1

    def standard_verdict(self, headers: dict[str, str], body: bytes) -> bool | None:
        """Whether ``standardwebhooks`` verifies the request, as a receiver's code would."""
        if self.secret is None or not self.secret.startswith("whsec_"):
            return None
        try:
            Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed header
            return False
        return True

    def _answer(self, received_headers: dict[str, str], body: bytes) -> tuple[int, bool | None]:
        valid: bool | None = None
        if self.secret is not None:
            valid = verify_signature(
                self.secret,
                received_headers.get(SIGNATURE_HEADER),
                body,
                datetime.now(UTC),
                self.tolerance,
            )
        with self._lock:
            b = self._behaviour
            event_id = received_headers.get(EVENT_ID_HEADER, "")
            if event_id in b.failing_events:
                return b.failing_events[event_id], valid
            if b.fail_status is not None:
                status = b.fail_status
                if b.fail_remaining is not None:
                    b.fail_remaining -= 1
                    if b.fail_remaining <= 0:
                        b.fail_status, b.fail_remaining = None, None
                return status, valid
        if valid is False:
            return 401, valid
        return self.ok_status, valid

    def _record(self, received: Received) -> None:
        with self._lock:
            self._requests.append(received)


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k: v for k, v in self.headers.items()}
            event_id = headers.get(EVENT_ID_HEADER, "")
            receiver._enter(event_id)
            try:
                if receiver.latency:
                    time.sleep(receiver.latency)  # a slow receiver, not a test waiting
                status, valid = receiver._answer(headers, body)
            finally:
                receiver._leave(event_id)
            receiver._record(
                Received(
                    method=self.command,
                    path=self.path,
                    headers=headers,
                    body=body,
                    valid_signature=valid,
                    status=status,
                    at=datetime.now(UTC),
                    standard_valid=receiver.standard_verdict(headers, body),
                )
            )
            reply = b'{"ok": true}' if 200 <= status < 300 else b'{"ok": false}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_PUT = do_POST

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


# --- SMTP --------------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.envelopes.append(envelope)
        return "250 OK"


class SmtpServer(Service):
    """A local SMTP server (aiosmtpd) collecting messages; optional AUTH without TLS."""

    def __init__(self, *, username: str | None = None, password: str | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.username = username
        self.password = password
        self._collector = _Collector()
        kwargs: dict[str, Any] = {}
        if username is not None:
            kwargs = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._controller = Controller(self._collector, hostname=self.host, port=self.port, **kwargs)
        self._started = False

    def _authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok)

    def start(self) -> Self:
        if not self._started:
            self._controller.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._controller.stop()
            self._started = False

    @property
    def messages(self) -> list[EmailMessage]:
        """Every message received so far, parsed."""
        with self._collector.lock:
            raw = [e.original_content or e.content for e in self._collector.envelopes]
        parsed = []
        for content in raw:
            data = content if isinstance(content, bytes) else str(content).encode()
            message = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed
