"""One way for a test to write a chain, on two nodes: real Anvil and the scripted node.

A scanner test pays the wallet (native, ERC-20, internal through a forwarder, reverted or
not), mines, and reorganises through a ``ChainDriver``; the same test then runs against both
``AnvilDriver`` (real transactions on a real EVM) and ``ScriptedDriver`` (the same facts
written into ``tests.support.scripted_node``), like APScheduler's one datastore suite over
every backend. ``replay`` values are opaque: what ``signed_payment``/``new_payment`` return is
what ``reorg`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from eth_account import Account
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.types import TxParams, Wei

from tests.support.anvil import AnvilNode
from tests.support.contracts import deploy, erc20_transfer, send_eth, wait_receipt
from tests.support.scripted_node import Call, Log, ScriptedNode, Tx

MINTED = 10**30  # what a new test token mints to the payer
ANVIL_KEYS = {  # Anvil's well-known dev keys, by account index
    1: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
}


class ChainDriver(Protocol):
    """What a scanner test does to a chain."""

    kind: str  # "anvil" | "scripted"
    url: str
    accounts: list[str]  # funded accounts; [1] is the usual payer

    def deploy_token(self, symbol: str, decimals: int) -> str:
        """A new ERC-20 minting ``MINTED`` to accounts[1]; its address."""

    def pay_token(self, token: str, sender: str, to: str, amount: int) -> str:
        """``transfer(to, amount)`` from ``sender`` (mined even if it fails); the tx hash."""

    def pay_native(self, sender: str, to: str, wei: int, *, gas: int | None = None) -> str:
        """A top-level ETH transfer (mined even if it reverts when ``gas`` is given)."""

    def forwarder(self) -> str:
        """A contract that pays through internal calls; its address."""

    def forward(
        self, forwarder: str, sender: str, payments: Sequence[tuple[str, int]],
        *, revert: bool = False,
    ) -> str:  # fmt: skip
        """One transaction paying each (to, wei) by an internal call; ``revert``: the
        transaction reverts after paying (one payment only)."""

    def toggle_receiver(self) -> str:
        """A contract wallet whose plain ETH transfers revert while it is closed."""

    def set_open(self, receiver: str, open_: bool) -> None:
        """Open or close a ``toggle_receiver`` (one transaction)."""

    def signed_payment(self, to: str, wei: int) -> tuple[str, Any]:
        """A payment from accounts[1] that ``reorg`` can mine again: (tx hash, replay)."""

    def new_payment(self, sender: str, to: str, wei: int) -> Any:
        """A payment for ``reorg`` to include in the new branch (not mined now)."""

    def reorg(self, depth: int, txs: Sequence[tuple[Any, int]] = ()) -> None:
        """Replace the last ``depth`` blocks; ``txs``: (replay, offset) to include."""

    def rollback(self, n: int) -> None:
        """Drop the last ``n`` blocks."""

    def mine(self, n: int = 1) -> None: ...
    def head(self) -> int: ...
    def block_hash(self, ref: int | str = "latest") -> str: ...
    def block_of(self, tx_hash: str) -> int: ...
    def status(self, tx_hash: str) -> int: ...
    def balance(self, address: str) -> int: ...


class AnvilDriver:
    """The chain written with real transactions on a real Anvil node."""

    kind = "anvil"

    def __init__(self, node: AnvilNode) -> None:
        assert node.url is not None
        self.node, self.url, self.w3 = node, node.url, node.web3()
        self.accounts = node.accounts()
        self._contracts: dict[str, Contract] = {}

    def _deploy(self, name: str, *args: Any) -> str:
        contract = deploy(self.w3, name, *args)
        self._contracts[contract.address] = contract
        return str(contract.address)

    def deploy_token(self, symbol: str, decimals: int) -> str:
        address = self._deploy("TestToken", f"Test {symbol}", symbol, decimals)
        mint = self._contracts[address].functions.mint(self.accounts[1], MINTED)
        wait_receipt(self.w3, mint.transact({"from": self.accounts[0]}))
        return address

    def pay_token(self, token: str, sender: str, to: str, amount: int) -> str:
        return erc20_transfer(self.w3, self._contracts[token], sender, to, amount, gas=100_000)

    def pay_native(self, sender: str, to: str, wei: int, *, gas: int | None = None) -> str:
        return send_eth(self.w3, sender, to, wei, gas=gas)

    def forwarder(self) -> str:
        return self._deploy("Forwarder")

    def forward(
        self, forwarder: str, sender: str, payments: Sequence[tuple[str, int]],
        *, revert: bool = False,
    ) -> str:  # fmt: skip
        fns = self._contracts[forwarder].functions
        params: TxParams = {"from": sender, "value": Wei(sum(wei for _, wei in payments))}
        if revert:
            ((to, _),) = payments
            call = fns.forwardThenRevert(to).transact({**params, "gas": 200_000})
        elif len(payments) == 1:
            call = fns.forward(payments[0][0]).transact(params)
        else:
            tos, amounts = [to for to, _ in payments], [wei for _, wei in payments]
            call = fns.forwardMany(tos, amounts).transact(params)
        return str(wait_receipt(self.w3, call)["transactionHash"].to_0x_hex())

    def toggle_receiver(self) -> str:
        return self._deploy("ToggleReceiver")

    def set_open(self, receiver: str, open_: bool) -> None:
        fn = self._contracts[receiver].functions.setOpen(open_)
        wait_receipt(self.w3, fn.transact({"from": self.accounts[1]}))

    def signed_payment(self, to: str, wei: int) -> tuple[str, Any]:
        payer = Account.from_key(ANVIL_KEYS[1])
        assert payer.address == self.accounts[1]
        signed = payer.sign_transaction(
            {"to": to, "value": wei, "gas": 21_000, "maxFeePerGas": 10**10, "chainId": 31337,
             "maxPriorityFeePerGas": 10**9,
             "nonce": self.w3.eth.get_transaction_count(payer.address)}
        )  # fmt: skip
        raw = signed.raw_transaction.to_0x_hex()
        tx = str(self.node.rpc("eth_sendRawTransaction", raw))
        wait_receipt(self.w3, tx)
        return tx, raw

    def new_payment(self, sender: str, to: str, wei: int) -> Any:
        return {"from": sender, "to": to, "value": hex(wei)}

    def reorg(self, depth: int, txs: Sequence[tuple[Any, int]] = ()) -> None:
        self.node.reorg(depth, txs)

    def rollback(self, n: int) -> None:
        self.node.rollback(n)

    def mine(self, n: int = 1) -> None:
        self.node.mine(n)

    def head(self) -> int:
        return self.node.block_number()

    def block_hash(self, ref: int | str = "latest") -> str:
        return str(self.node.block(ref)["hash"])

    def block_of(self, tx_hash: str) -> int:
        return int(wait_receipt(self.w3, tx_hash)["blockNumber"])

    def status(self, tx_hash: str) -> int:
        return int(wait_receipt(self.w3, tx_hash)["status"])

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))


class ScriptedDriver:
    """The same chain written straight into the scripted node."""

    kind = "scripted"

    def __init__(self, node: ScriptedNode) -> None:
        self.node, self.url, self.accounts = node, node.url, node.accounts
        self._created = 0

    def _contract(self, label: str) -> str:
        """A new contract address, created by a transaction of its own (one block, as on
        Anvil)."""
        self._created += 1
        address = to_checksum_address(keccak(text=f"{label}:{self._created}")[-20:])
        self.node.send(self.accounts[0], address, 0, gas_used=100_000)
        return str(address)

    def deploy_token(self, symbol: str, decimals: int) -> str:
        token = self._contract(f"token:{symbol}")
        mint = Log(token, "0x" + "00" * 20, self.accounts[1], MINTED)
        self.node.send(self.accounts[0], token, 0, logs=[mint], gas_used=50_000)
        return token

    def pay_token(self, token: str, sender: str, to: str, amount: int) -> str:
        ok = self.node.token_balance(token, sender) >= amount
        log = Log(token, sender, to, amount)
        return self.node.send(sender, token, 0, logs=[log], status=int(ok), gas_used=50_000).hash

    def pay_native(self, sender: str, to: str, wei: int, *, gas: int | None = None) -> str:
        return self.node.send(sender, to, wei).hash

    def forwarder(self) -> str:
        return self._contract("forwarder")

    def forward(
        self, forwarder: str, sender: str, payments: Sequence[tuple[str, int]],
        *, revert: bool = False,
    ) -> str:  # fmt: skip
        calls = [Call(forwarder, to, wei) for to, wei in payments]
        total = sum(wei for _, wei in payments)
        tx = self.node.send(sender, forwarder, total, calls=calls, status=int(not revert),
                            gas_used=40_000)  # fmt: skip
        return tx.hash

    def toggle_receiver(self) -> str:
        return self._contract("toggle")

    def set_open(self, receiver: str, open_: bool) -> None:
        if open_:
            self.node.closed.discard(receiver)
        else:
            self.node.closed.add(receiver)
        self.node.send(self.accounts[1], receiver, 0, calls=[], gas_used=30_000)

    def signed_payment(self, to: str, wei: int) -> tuple[str, Any]:
        tx = self.node.send(self.accounts[1], to, wei)
        return tx.hash, tx

    def new_payment(self, sender: str, to: str, wei: int) -> Any:
        return self.node.new_tx(sender, to, wei)

    def reorg(self, depth: int, txs: Sequence[tuple[Any, int]] = ()) -> None:
        replays: list[tuple[Tx, int]] = [(tx, offset) for tx, offset in txs]
        self.node.reorg(depth, replays)

    def rollback(self, n: int) -> None:
        self.node.rollback(n)

    def mine(self, n: int = 1) -> None:
        self.node.mine(n)

    def head(self) -> int:
        return self.node.head

    def block_hash(self, ref: int | str = "latest") -> str:
        block = self.node.rpc_eth_getBlockByNumber(hex(ref) if isinstance(ref, int) else ref)
        assert block is not None
        return str(block["hash"])

    def block_of(self, tx_hash: str) -> int:
        receipt = self.node.rpc_eth_getTransactionReceipt(tx_hash)
        assert receipt is not None, f"{tx_hash} is not mined"
        return int(receipt["blockNumber"], 16)

    def status(self, tx_hash: str) -> int:
        receipt = self.node.rpc_eth_getTransactionReceipt(tx_hash)
        assert receipt is not None, f"{tx_hash} is not mined"
        return int(receipt["status"], 16)

    def balance(self, address: str) -> int:
        return self.node.balance(to_checksum_address(address))
