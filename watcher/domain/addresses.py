"""Addresses and transaction hashes: parsed and checksummed at the edge, compared checksummed."""

from __future__ import annotations

import re

from eth_hash.auto import keccak

from watcher.errors import BadInput

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def parse_address(text: object, *, what: str = "address") -> str:
    """EIP-55 checksummed form of ``text``; refuses a wrong length or a wrong checksum.

    All-lowercase (or all-uppercase) hex carries no checksum and is accepted; mixed case must
    be a valid EIP-55 checksum.
    """
    if not isinstance(text, str) or not _ADDRESS.match(text.strip()):
        raise BadInput(f"{what} {text!r} is not an EVM address (0x followed by 40 hex characters)")
    raw = text.strip()
    body = raw[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(raw):
        raise BadInput(f"{what} {text!r} has a wrong EIP-55 checksum (mistyped?)")
    return to_checksum_address(raw)


def to_checksum_address(address: str) -> str:
    """The EIP-55 form of a 0x-prefixed 40-hex-digit ``address`` (any case).

    Here rather than eth_utils, whose import (about 50 ms) every read command would pay.
    """
    body = address[2:].lower()
    digest = keccak(body.encode("ascii")).hex()
    pairs = zip(body, digest, strict=False)  # the digest is longer: its first 40 nibbles
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in pairs)


def is_checksum_address(address: str) -> bool:
    """True when ``address`` is in its EIP-55 form."""
    return bool(_ADDRESS.match(address)) and to_checksum_address(address) == address


def parse_tx_hash(text: object) -> str:
    """Lowercase 0x-prefixed 32-byte transaction hash."""
    if not isinstance(text, str) or not _TX_HASH.match(text.strip()):
        raise BadInput(f"transaction hash {text!r} is not 0x followed by 64 hex characters")
    return text.strip().lower()
