"""A web3 provider that sends every request through an ``RpcPool`` (its failover, backoff,
batch sizing and redaction), for the few places that use web3's contract helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from web3.exceptions import ProviderConnectionError
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from watcher.errors import RpcError

if TYPE_CHECKING:
    from watcher.chain.rpc import RpcPool


class PoolProvider(JSONBaseProvider):
    """A web3 provider that sends every request through an ``RpcPool``.

    JSON-RPC error answers go back to web3 untouched (so it raises its own exceptions, e.g.
    ``ContractLogicError``); transport failures raise ``RpcError`` once the pool gives up.
    """

    def __init__(self, pool: RpcPool) -> None:
        super().__init__()
        self.pool = pool

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        answer = self.pool._exchange([(str(method), params or ())])[0]
        return cast(RPCResponse, answer)

    def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse]:
        calls = [(str(method), params or ()) for method, params in requests]
        size = self.pool.max_batch
        answers: list[dict[str, Any]] = []
        for start in range(0, len(calls), size):
            answers += self.pool._exchange(calls[start : start + size])
        return cast(list[RPCResponse], answers)

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.pool.call("web3_clientVersion")
        except RpcError as exc:
            if show_traceback:
                raise ProviderConnectionError(str(exc)) from exc
            return False
        return True

    def __str__(self) -> str:
        return f"RpcPool provider for {self.pool.chain} via {self.pool.current_url_redacted}"
