"""Who may read the status listener: the Host check (DNS rebinding) and the bearer token.

- **Host check**: a request's ``Host`` must name the ``listen`` host, one of ``[status]
  allowed_hosts``, ``localhost``/``127.0.0.1``/``::1`` when listening on a loopback address,
  or any IP address when listening on ``0.0.0.0``/``::`` (a rebinding attack needs a name the
  attacker controls; an IP literal cannot be one). The port is not compared: a proxy may
  forward its own.
- **Token**: with ``[status] token`` set, everything but ``OPEN_PATHS`` (``/healthz``) needs
  ``Authorization: Bearer <token>`` (Prometheus' ``authorization`` setting) or HTTP Basic with
  the token as the password (what a browser prompts for).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
OPEN_PATHS = frozenset({"/healthz"})


def host_name(header: str | None) -> str | None:
    """The host of a ``Host`` header without its port, lowercased; None when malformed."""
    if not header:
        return None
    value = header.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            host = value
        elif not port.isdigit() or ":" in host:
            return None
    host = host.rstrip(".")
    return host or None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostCheck:
    """Which ``Host`` headers the listener answers (see the module docstring)."""

    def __init__(self, listen_host: str, allowed: Iterable[str] = ()) -> None:
        host = listen_host.lower()
        self.names = {host, *(a.lower().strip("[]").rstrip(".") for a in allowed)}
        self.any_ip = False
        if _is_ip(host):
            address = ipaddress.ip_address(host)
            if address.is_loopback:
                self.names |= _LOOPBACK_NAMES
            self.any_ip = address.is_unspecified
        elif host == "localhost":
            self.names |= _LOOPBACK_NAMES

    def allows(self, header: str | None) -> bool:
        name = host_name(header)
        if name is None:
            return False
        return name in self.names or (self.any_ip and _is_ip(name))


def token_matches(token: str, authorization: str | None) -> bool:
    """Whether ``Authorization`` carries ``token``: ``Bearer <token>``, or Basic with the token
    as the password (any user name). Compared in constant time."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        given = credentials
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
