"""EIP-55 checksums computed by watcher.domain.addresses (without eth_utils at start-up)."""

from __future__ import annotations

import pytest
from eth_utils import to_checksum_address as reference
from hypothesis import given
from hypothesis import strategies as st

from watcher.domain.addresses import is_checksum_address, parse_address, to_checksum_address
from watcher.errors import BadInput

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


@given(st.binary(min_size=20, max_size=20))
def test_checksum_equals_eth_utils(raw: bytes) -> None:
    """Any address checksums exactly as eth_utils does, from lower or upper case."""
    address = "0x" + raw.hex()
    expected = reference(address)
    assert to_checksum_address(address) == expected
    assert to_checksum_address("0x" + raw.hex().upper()) == expected
    assert is_checksum_address(expected)


def test_parse_address_accepts_one_case_and_refuses_a_wrong_checksum() -> None:
    """Lowercase input is checksummed; mixed case with one letter flipped is refused."""
    assert parse_address(WALLET.lower()) == WALLET
    with pytest.raises(BadInput, match="wrong EIP-55 checksum"):
        parse_address(WALLET.replace("B3e9", "b3E9"))
