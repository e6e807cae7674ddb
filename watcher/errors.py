"""One error base class for everything proofwatch raises on purpose.

Adapters (web3, SQLAlchemy, HTTP) catch their library's errors and re-raise one of these with
``from``, so the CLI can map each to an exit code and a one-line message without a traceback.
"""

from __future__ import annotations


class WatcherError(Exception):
    """Something could not be completed (node unreachable, database locked, ...): exit 1."""

    exit_code = 1


class BadInput(WatcherError):
    """An argument or config value does not parse or is not allowed: exit 2, nothing written."""

    exit_code = 2


class ConfigError(BadInput):
    """The configuration is refused as a whole; ``problems`` names every bad key and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class Refused(WatcherError):
    """The request is well-formed but the current state forbids it: exit 3, nothing written."""

    exit_code = 3


class NotFound(BadInput):
    """A named object (retainer, invoice, chain, asset, event) does not exist: exit 2."""


class RpcError(WatcherError):
    """Every RPC endpoint of a chain failed, or a node answered with a JSON-RPC error.

    Messages never contain an RPC URL: only its redacted form.
    """


class RangeTooLarge(RpcError):
    """The provider refused an ``eth_getLogs`` range or result size; split the range and retry."""


class FinalityViolation(WatcherError):
    """A reorg reached below data already treated as final: proofs must not be rewritten."""
