"""Deploy and drive the test contracts in tests/contracts/ (pre-compiled JSON in build/).

Transactions are sent with ``eth_sendTransaction`` from Anvil's unlocked dev accounts. With the
default automine each helper returns once the receipt exists; on a ``no_mining`` node pass
``wait=False`` and mine yourself. Without an explicit ``gas`` a transaction that would revert
fails at gas estimation (an exception); pass ``gas=`` to get it mined with status 0 instead.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import TxParams, TxReceipt, Wei
from web3.utils import get_create_address

BUILD_DIR = Path(__file__).resolve().parents[1] / "contracts" / "build"
RECEIPT_TIMEOUT = 10.0


@cache
def _read_artifact(name: str) -> str:
    path = BUILD_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no artifact {path}: run `node tests/contracts/build.mjs` (after `make tools`)"
        )
    return path.read_text()


def load_artifact(name: str) -> dict[str, Any]:
    """``{"contractName", "abi", "bytecode"}`` for a contract in tests/contracts/build/."""
    artifact: dict[str, Any] = json.loads(_read_artifact(name))
    return artifact


def wait_receipt(w3: Web3, tx_hash: HexBytes | str, timeout: float = RECEIPT_TIMEOUT) -> TxReceipt:
    """Wait (polling, with a deadline) for a transaction's receipt."""
    return w3.eth.wait_for_transaction_receipt(
        HexBytes(tx_hash), timeout=timeout, poll_latency=0.05
    )


def deploy(
    w3: Web3,
    name: str,
    *args: Any,
    sender: str | None = None,
    wait: bool = True,
) -> Contract:
    """Deploy ``name`` with constructor ``args`` from ``sender`` (default: first dev account).

    With ``wait`` (the default) the receipt must have status 1. With ``wait=False`` the contract
    is returned at its predicted address before it is mined.
    """
    artifact = load_artifact(name)
    sender = Web3.to_checksum_address(sender or w3.eth.accounts[0])
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    nonce = w3.eth.get_transaction_count(sender, "pending")
    tx_hash = factory.constructor(*args).transact({"from": sender, "nonce": nonce})
    if wait:
        receipt = wait_receipt(w3, tx_hash)
        assert receipt["status"] == 1, f"deploying {name} failed: {receipt}"
        address = receipt["contractAddress"]
        assert address is not None
    else:
        address = get_create_address(sender, nonce)
    return w3.eth.contract(address=address, abi=artifact["abi"])


def _finish(w3: Web3, tx_hash: HexBytes, wait: bool) -> str:
    if wait:
        wait_receipt(w3, tx_hash)
    return tx_hash.to_0x_hex()


def erc20_transfer(
    w3: Web3,
    token: Contract,
    sender: str,
    to: str,
    amount: int,
    *,
    gas: int | None = None,
    wait: bool = True,
) -> str:
    """``token.transfer(to, amount)`` from ``sender``; returns the 0x tx hash.

    The receipt's status is not checked: a transfer sent with an explicit ``gas`` may revert.
    """
    params: TxParams = {"from": Web3.to_checksum_address(sender)}
    if gas is not None:
        params["gas"] = gas
    tx_hash = token.functions.transfer(Web3.to_checksum_address(to), amount).transact(params)
    return _finish(w3, tx_hash, wait)


def send_eth(
    w3: Web3,
    sender: str,
    to: str,
    wei: int,
    *,
    gas: int | None = None,
    wait: bool = True,
) -> str:
    """A top-level native ETH transfer; returns the 0x tx hash (status not checked)."""
    params: TxParams = {
        "from": Web3.to_checksum_address(sender),
        "to": Web3.to_checksum_address(to),
        "value": Wei(wei),
    }
    if gas is not None:
        params["gas"] = gas
    return _finish(w3, w3.eth.send_transaction(params), wait)
