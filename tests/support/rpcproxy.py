"""A local JSON-RPC proxy with switchable faults, for testing RPC clients.

The proxy listens on 127.0.0.1 (a free port, its own daemon thread) and forwards every POST to
an upstream: a node URL (Anvil), or a Python function ``handler(method, params) -> result``
that may raise ``RpcFault`` (a tiny fake node for unit tests). It ignores the request path, so
``f"{proxy.url}/v2/SECRETKEY123"`` works like a provider URL carrying an API key.

Faults: ``max_log_range`` refuses wide ``eth_getLogs`` ranges (also inside batches) with
JSON-RPC error -32005; ``fail_next`` answers the next POSTs with an HTTP error status;
``fail_next_rpc`` answers every entry of the next POSTs with a JSON-RPC error; ``down`` answers
503 (``down_mode="503"``) or drops the connection (``down_mode="drop"``); ``stall_seconds``
waits before answering; ``reverse_batches`` answers batch entries in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from tests.support.service import Service

Handler = Callable[[str, list[Any]], Any]


class RpcFault(Exception):
    """Raised by a fake upstream handler: answered as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _answer_error(entry: Any, error: dict[str, Any]) -> dict[str, Any]:
    req_id = entry.get("id") if isinstance(entry, dict) else None
    return {"jsonrpc": "2.0", "id": req_id, "error": error}


class RpcProxy(Service):
    """A JSON-RPC proxy on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        upstream: str | Handler,
        *,
        max_log_range: int | None = None,
        reverse_batches: bool = False,
    ) -> None:
        self.upstream = upstream
        self.max_log_range = max_log_range
        self.reverse_batches = reverse_batches
        self.down = False
        self.down_mode = "503"
        self.stall_seconds = 0.0
        self.calls: Counter[str] = Counter()
        self.posts = 0
        self.url = ""
        self._lock = threading.Lock()
        self._http_faults: deque[tuple[int, int | None]] = deque()
        self._rpc_faults: deque[dict[str, Any]] = deque()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._local = threading.local()

    # -- control ---------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, retry_after: int | None = None) -> None:
        """Answer the next ``n`` POSTs with HTTP ``status`` (and a Retry-After header if set)."""
        with self._lock:
            self._http_faults.extend([(status, retry_after)] * n)

    def fail_next_rpc(
        self, n: int, code: int = -32005, message: str = "rate limit exceeded, try again later"
    ) -> None:
        """Answer every entry of the next ``n`` POSTs with this JSON-RPC error (HTTP 200)."""
        with self._lock:
            self._rpc_faults.extend([{"code": code, "message": message}] * n)

    def start(self) -> RpcProxy:
        """Listen on a free port of 127.0.0.1 and serve from a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("RpcProxy already started")
        proxy = self

        class _Handler(_ProxyHandler):
            owner = proxy

        self._stopping.clear()
        self._server = _QuietServer(("127.0.0.1", 0), _Handler)
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and wake stalled requests."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- serving ---------------------------------------------------------------------------

    def _serve(self, handler: _ProxyHandler, body: bytes) -> None:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        entries = payload if isinstance(payload, list) else [payload]
        with self._lock:
            self.posts += 1
            self.calls.update(e["method"] for e in entries if isinstance(e, dict) and "method" in e)
            http_fault = self._http_faults.popleft() if self._http_faults else None
            rpc_fault = self._rpc_faults.popleft() if self._rpc_faults else None
        if self.stall_seconds > 0 and self._stopping.wait(self.stall_seconds):
            handler.close_connection = True  # stopped while stalling: answer nothing
            return
        if self.down:
            if self.down_mode == "drop":
                handler.close_connection = True
                return
            handler.reply(503, b"service unavailable")
            return
        if http_fault is not None:
            status, retry_after = http_fault
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            handler.reply(status, b"injected failure", headers)
            return
        if payload is None:
            error = {"code": -32700, "message": "parse error"}
            handler.reply_json(400, _answer_error(None, error))
            return
        answers: dict[int, Any] = {}
        forward: list[tuple[int, Any]] = []
        for pos, entry in enumerate(entries):
            if rpc_fault is not None:
                answers[pos] = _answer_error(entry, rpc_fault)
            elif self._refuse_range(entry):
                message = f"block range too large (max {self.max_log_range} blocks)"
                error = {"code": -32005, "message": message}
                answers[pos] = _answer_error(entry, error)
            else:
                forward.append((pos, entry))
        if forward:
            try:
                answers.update(self._forward(forward, batch=isinstance(payload, list)))
            except requests.RequestException:
                handler.reply(502, b"upstream unreachable")
                return
        ordered = [answers[pos] for pos in range(len(entries))]
        if not isinstance(payload, list):
            handler.reply_json(200, ordered[0])
            return
        handler.reply_json(200, ordered[::-1] if self.reverse_batches else ordered)

    def _forward(self, forward: list[tuple[int, Any]], *, batch: bool) -> dict[int, Any]:
        """The upstream's answers to ``forward`` entries, by their position in the request."""
        if callable(self.upstream):
            return {pos: self._local_answer(entry) for pos, entry in forward}
        sent = [entry for _, entry in forward]
        result = self._upstream_post(sent if batch else sent[0])
        if not isinstance(result, list):
            return {pos: result for pos, _ in forward}
        by_id = {a.get("id"): a for a in result if isinstance(a, dict)}
        return {pos: by_id.get(entry.get("id")) for pos, entry in forward}

    def _local_answer(self, entry: Any) -> dict[str, Any]:
        assert callable(self.upstream)
        if not isinstance(entry, dict) or "method" not in entry:
            return _answer_error(entry, {"code": -32600, "message": "invalid request"})
        try:
            result = self.upstream(entry["method"], list(entry.get("params") or []))
        except RpcFault as fault:
            return _answer_error(entry, fault.error())
        return {"jsonrpc": "2.0", "id": entry.get("id"), "result": result}

    def _upstream_post(self, payload: Any) -> Any:
        assert isinstance(self.upstream, str)
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        response = session.post(self.upstream, json=payload, timeout=30)
        return response.json()

    def _refuse_range(self, entry: Any) -> bool:
        """True when ``entry`` is an eth_getLogs wider than ``max_log_range`` blocks."""
        if self.max_log_range is None or not isinstance(entry, dict):
            return False
        if entry.get("method") != "eth_getLogs":
            return False
        params = entry.get("params") or [{}]
        flt = params[0] if isinstance(params[0], dict) else {}
        if "blockHash" in flt:
            return False
        first = self._block_number(flt.get("fromBlock", "latest"))
        last = self._block_number(flt.get("toBlock", "latest"))
        return last - first + 1 > self.max_log_range

    def _block_number(self, ref: Any) -> int:
        if isinstance(ref, int):
            return ref
        if isinstance(ref, str) and ref.startswith("0x"):
            return int(ref, 16)
        if ref == "earliest":
            return 0
        if callable(self.upstream):
            head = self.upstream("eth_blockNumber", [])
        else:
            head = self._upstream_post(
                {"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}
            )["result"]
        return int(head, 16) if isinstance(head, str) else int(head)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout, closed socket) is expected: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: RpcProxy
    protocol_version = "HTTP/1.1"  # keep-alive, like real providers

    def setup(self) -> None:
        super().setup()
        self.owner._track(self.connection, add=True)

    def finish(self) -> None:
        self.owner._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.owner._serve(self, body)

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, value: Any) -> None:
        body = json.dumps(value).encode()
        self.reply(status, body, {"Content-Type": "application/json"})

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean: no access log on stderr."""
