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

Faults of a provider fleet (a load balancer over backends that are not in step):
``lag_blocks`` (0 = off) makes the proxy a node that many blocks behind: ``eth_blockNumber``,
the ``latest``/``safe``/``finalized`` tags and blocks by number above the lagged head answer
as a node that does not have those blocks yet (null blocks, unknown receipts, "header not
found" for state, by number or by such a block's hash), and ``eth_getLogs``/``trace_filter``
answer ``[]`` above it;
``finalized_lag`` makes the ``safe``/``finalized`` tags trail by that many more blocks (set it
during a run: the tag moves backwards); ``disagree`` answers receipts with another block hash
(a second URL that disagrees); ``stale_logs_next(n)`` answers the next ``n`` ``eth_getLogs``
entries with ``[]`` (a backend behind the balancer); ``drop_entry_next(n)`` leaves the last
entry out of the next ``n`` batch answers; ``malformed_next(n)`` answers the next ``n`` POSTs
with a truncated JSON body; ``stall_next(n, seconds)`` holds the next ``n`` POSTs (past the
client's timeout); ``fail_next(n, 429, retry_after=s)`` is a rate limit with ``Retry-After``;
``fail_methods`` answers 503 to any POST holding one of those methods (a backend that cannot
serve them, so the client fails over for exactly those requests).

Counters: ``posts`` (HTTP POSTs), ``calls`` (JSON-RPC entries by method, plus
``FULL_BLOCK`` for each block asked for with its transactions), ``asked`` (entries by method
and parameters), ``bytes_sent`` (body bytes answered) and, when ``count_method_bytes`` is
on (raw mode), ``method_bytes`` (answer entries' bytes by method). ``raw=True`` (for measuring, e.g.
bench/scan.py) forwards each POST's body to the node unchanged and answers the node's bytes
as they are, never decoding the answer: the counters stay exact and the proxy costs little;
faults do not apply then.
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

from tests.support.rpcviews import ChainView
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


FULL_BLOCK = "eth_getBlockByNumber(full)"  # counted in RpcProxy.calls besides the method


def _full_block(entry: Any) -> bool:
    """Whether ``entry`` asks for a block with its transactions (not only its header)."""
    if not isinstance(entry, dict) or entry.get("method") != "eth_getBlockByNumber":
        return False
    params = entry.get("params") or []
    return len(params) > 1 and params[1] is True


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
        raw: bool = False,
    ) -> None:
        self.upstream = upstream
        self.raw = raw
        self.max_log_range = max_log_range
        self.reverse_batches = reverse_batches
        self.down = False
        self.down_mode = "503"
        self.stall_seconds = 0.0
        self.lag_blocks: int = 0
        self.finalized_lag: int = 0
        self.disagree = False
        self.fail_methods: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.asked: Counter[tuple[str, str]] = Counter()  # (method, params as JSON) per entry
        # With ``count_method_bytes`` (raw mode), each answer entry's size (compact JSON) by the
        # method it answers: slower, so a bench turns it on only where it does not time.
        self.count_method_bytes = False
        self.method_bytes: Counter[str] = Counter()
        self.posts = 0
        self.bytes_sent = 0  # response bodies, as a provider would bill them
        self.url = ""
        self._lock = threading.Lock()
        self._http_faults: deque[tuple[int, int | None]] = deque()
        self._rpc_faults: deque[dict[str, Any]] = deque()
        self._stale_logs = 0
        self._drop_entries = 0
        self._malformed = 0
        self._stalls: deque[float] = deque()
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

    def stale_logs_next(self, n: int) -> None:
        """Answer the next ``n`` ``eth_getLogs`` entries with ``[]`` (a lagging backend)."""
        with self._lock:
            self._stale_logs += n

    def drop_entry_next(self, n: int) -> None:
        """Leave the last entry out of the next ``n`` batch answers."""
        with self._lock:
            self._drop_entries += n

    def malformed_next(self, n: int) -> None:
        """Answer the next ``n`` POSTs with HTTP 200 and a truncated JSON body."""
        with self._lock:
            self._malformed += n

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next ``n`` POSTs for ``seconds`` before answering them."""
        with self._lock:
            self._stalls.extend([seconds] * n)

    def clear_faults(self) -> None:
        """Stop every fault: the proxy forwards as a clean, up-to-date node from now on."""
        with self._lock:
            self._http_faults.clear()
            self._rpc_faults.clear()
            self._stalls.clear()
            self._stale_logs = self._drop_entries = self._malformed = 0
        self.down, self.stall_seconds, self.fail_methods = False, 0.0, set()
        self.lag_blocks = self.finalized_lag = 0
        self.disagree = False

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
            self.calls.update(FULL_BLOCK for e in entries if _full_block(e))
            self.asked.update(
                (e["method"], json.dumps(e.get("params", []), sort_keys=True))
                for e in entries
                if isinstance(e, dict) and "method" in e
            )
        if self.raw and isinstance(self.upstream, str):
            self._pass_through(handler, body)
            return
        with self._lock:
            http_fault = self._http_faults.popleft() if self._http_faults else None
            rpc_fault = self._rpc_faults.popleft() if self._rpc_faults else None
            stall = self._stalls.popleft() if self._stalls else self.stall_seconds
            malformed = self._malformed > 0
            self._malformed -= malformed
            drop = isinstance(payload, list) and len(payload) > 1 and self._drop_entries > 0
            self._drop_entries -= drop
        if stall > 0 and self._stopping.wait(stall):
            handler.close_connection = True  # stopped while stalling: answer nothing
            return
        if self.down:
            if self.down_mode == "drop":
                handler.close_connection = True
                return
            handler.reply(503, b"service unavailable")
            return
        methods = {e.get("method") for e in entries if isinstance(e, dict)}
        if methods & self.fail_methods:
            handler.reply(503, b"service unavailable for this method")
            return
        if http_fault is not None:
            status, retry_after = http_fault
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            handler.reply(status, b"injected failure", headers)
            return
        if malformed:
            handler.reply(200, b'{"jsonrpc": "2.0", "id": 1, "resu', {"Content-Type": "text/json"})
            return
        if payload is None:
            error = {"code": -32700, "message": "parse error"}
            handler.reply_json(400, _answer_error(None, error))
            return
        answers: dict[int, Any] = {}
        forward: list[tuple[int, Any]] = []
        try:
            view = self._view()
        except requests.RequestException:
            handler.reply(502, b"upstream unreachable")
            return
        for pos, entry in enumerate(entries):
            if rpc_fault is not None:
                answers[pos] = _answer_error(entry, rpc_fault)
            elif self._refuse_range(entry):
                message = f"block range too large (max {self.max_log_range} blocks)"
                error = {"code": -32005, "message": message}
                answers[pos] = _answer_error(entry, error)
            elif self._stale_log(entry):
                answers[pos] = {"jsonrpc": "2.0", "id": entry.get("id"), "result": []}
            elif view is not None and isinstance(entry, dict):
                rewritten, local = view.rewrite(entry)
                if rewritten is None:
                    answers[pos] = local
                else:
                    forward.append((pos, rewritten))
            else:
                forward.append((pos, entry))
        if forward:
            try:
                got = self._forward(forward, batch=isinstance(payload, list))
            except requests.RequestException:
                handler.reply(502, b"upstream unreachable")
                return
            if view is not None:
                got = {pos: view.answer(entry, got[pos]) for pos, entry in forward}
            answers.update(got)
        ordered = [answers[pos] for pos in range(len(entries))]
        if drop:
            ordered = ordered[:-1]
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

    def _pass_through(self, handler: _ProxyHandler, body: bytes) -> None:
        assert isinstance(self.upstream, str)
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            response = session.post(
                self.upstream,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            )
        except requests.RequestException:
            handler.reply(502, b"upstream unreachable")
            return
        if self.count_method_bytes:
            self._count_method_bytes(body, response.content)
        handler.reply(response.status_code, response.content, {"Content-Type": "application/json"})

    def _count_method_bytes(self, body: bytes, answer: bytes) -> None:
        """Each answer entry's compact JSON size, by the method of the request with its id."""
        try:
            asked, got = json.loads(body), json.loads(answer)
        except ValueError:
            return
        asked = asked if isinstance(asked, list) else [asked]
        got = got if isinstance(got, list) else [got]
        methods = {e.get("id"): e.get("method") for e in asked if isinstance(e, dict)}
        sizes: Counter[str] = Counter()
        for entry in got:
            if isinstance(entry, dict):
                method = str(methods.get(entry.get("id"), "?"))
                sizes[method] += len(json.dumps(entry, separators=(",", ":")))
        with self._lock:
            self.method_bytes.update(sizes)

    def _upstream_post(self, payload: Any) -> Any:
        assert isinstance(self.upstream, str)
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        response = session.post(self.upstream, json=payload, timeout=30)
        return response.json()

    def _view(self) -> ChainView | None:
        """The lagging/disagreeing node this POST is answered as, or None (a clean node)."""
        if not (self.lag_blocks or self.finalized_lag or self.disagree):
            return None
        tags: dict[str, int] = {}

        def tag_number(tag: str) -> int:
            if tag not in tags:
                block = self._upstream_call("eth_getBlockByNumber", [tag, False])
                tags[tag] = int(block["number"], 16)
            return tags[tag]

        def hash_number(block_hash: str) -> int | None:
            block = self._upstream_call("eth_getBlockByHash", [block_hash, False])
            return int(block["number"], 16) if isinstance(block, dict) else None

        head = max(0, self._block_number("latest") - self.lag_blocks)
        return ChainView(
            head, tag_number, self.finalized_lag, self.lag_blocks, self.disagree, hash_number
        )

    def _stale_log(self, entry: Any) -> bool:
        if not isinstance(entry, dict) or entry.get("method") != "eth_getLogs":
            return False
        with self._lock:
            if self._stale_logs <= 0:
                return False
            self._stale_logs -= 1
        return True

    def _upstream_call(self, method: str, params: list[Any]) -> Any:
        if callable(self.upstream):
            return self.upstream(method, params)
        entry = {"jsonrpc": "2.0", "id": 0, "method": method, "params": params}
        return self._upstream_post(entry)["result"]

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
        head = self._upstream_call("eth_blockNumber", [])
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
    # The headers and the body go out in two writes: with Nagle's algorithm on, a small body
    # waits for the client's delayed ACK of the headers, 40 ms per small answer (measured:
    # eth_blockNumber 44 ms through the proxy, 0.6 ms straight to Anvil).
    disable_nagle_algorithm = True

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
        with self.owner._lock:  # counted before the client can read it: no race with its reader
            self.owner.bytes_sent += len(body)
        self.wfile.write(body)

    def reply_json(self, status: int, value: Any) -> None:
        body = json.dumps(value).encode()
        self.reply(status, body, {"Content-Type": "application/json"})

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean: no access log on stderr."""
