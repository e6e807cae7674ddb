"""The benchmark chain: a fresh Anvil filled with payments to the wallet and noise around them.

``ChainBuilder.build`` makes the standard chain of ``bench/scan.py`` (1,000 payments in
``--blocks`` blocks, about 3 transactions per busy block); ``ChainBuilder.build_busy`` the
"busy chain" (every block stuffed with noise transactions, a payment every few blocks), where
the cost of reading whole blocks shows. ``Rpc`` is plain batched JSON-RPC over requests.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from web3.utils import get_create_address

from tests.support.anvil import AnvilNode
from tests.support.contracts import load_artifact

WALLET = to_checksum_address("0xb3e9568a9cbb624403743340358c85ccce130893")
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
BUSY_BLOCKS = 1000  # blocks that hold the transactions (about 3 each); the others stay empty
TAIL_BLOCKS = 70  # empty blocks after the last payment: finalized = head - 64 passes them all
ETH = 10**18


Tx = dict[str, str]


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def calldata(signature: str, types: Sequence[str], args: Sequence[Any]) -> str:
    return "0x" + (selector(signature) + encode(list(types), list(args))).hex()


def addr_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


# --- talking to Anvil -----------------------------------------------------------------------


class Rpc:
    """Plain JSON-RPC over one requests.Session, counting HTTP POSTs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        self.posts = 0
        self.http_seconds = 0.0  # time inside HTTP POSTs (sending, Anvil working, receiving)
        self._id = 0

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Results in request order; any JSON-RPC error raises."""
        if not calls:
            return []
        entries: list[dict[str, Any]] = []
        for method, params in calls:
            self._id += 1
            entries.append({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        self.posts += 1
        started = time.perf_counter()
        response = self.session.post(self.url, data=json.dumps(entries), timeout=120)
        self.http_seconds += time.perf_counter() - started
        response.raise_for_status()
        by_id = {a["id"]: a for a in response.json()}
        out = []
        for entry in entries:
            answer = by_id[entry["id"]]
            if answer.get("error") is not None:
                raise RuntimeError(f"{entry['method']}: {answer['error']}")
            out.append(answer["result"])
        return out

    def call(self, method: str, *params: Any) -> Any:
        return self.batch([(method, list(params))])[0]

    def close(self) -> None:
        self.session.close()


# --- building the chain ---------------------------------------------------------------------


@dataclass
class Expected:
    """What the scan must find: (kind, tx hash, amount) per payment."""

    payments: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    reverted: list[str] = field(default_factory=list)  # tx hashes that must have status 0
    ok: list[str] = field(default_factory=list)  # tx hashes that must have status 1
    payment_blocks: list[int] = field(default_factory=list)  # one per paying tx

    def sent(self, pays: Sequence[tuple[str, int]], tx_hash: str, *, reverts: bool) -> None:
        """A transaction sent: what it must pay the wallet (nothing if it reverts)."""
        (self.reverted if reverts else self.ok).append(tx_hash)
        for kind, amount in pays:
            self.payments[(kind, tx_hash.lower(), amount)] += 1
            self.by_kind[kind] += 1


@dataclass
class BuiltChain:
    head: int
    tokens: dict[str, tuple[str, int]]  # configured symbol -> (address, decimals)
    expected: Expected
    transactions: int
    busy_blocks: int
    seconds: float
    mining: float


class ChainBuilder:
    def __init__(self, node: AnvilNode, rng: random.Random) -> None:
        assert node.url is not None
        self.rpc = Rpc(node.url)
        self.rng = rng
        self.accounts = node.accounts()
        self.nonces = {a: 0 for a in self.accounts}
        self.mining = 0.0  # seconds spent in anvil_mine
        self.others = [
            to_checksum_address("0x" + rng.getrandbits(160).to_bytes(20, "big").hex())
            for _ in range(200)
        ]

    def tx(self, sender: str, to: str | None, *, value: int = 0, data: str = "0x", gas: int) -> Tx:
        """A transaction request; its nonce is given when it is sent."""
        tx = {"from": sender, "value": hex(value), "data": data, "gas": hex(gas)}
        if to is not None:
            tx["to"] = to
        return tx

    def send(self, txs: Sequence[Tx]) -> list[str]:
        """Send ``txs`` in one batch, with explicit nonces in this order (Anvil runs a batch's
        entries concurrently: without them two txs of one sender could take the same nonce)."""
        calls = []
        for tx in txs:
            nonce = self.nonces[tx["from"]]
            self.nonces[tx["from"]] += 1
            calls.append(("eth_sendTransaction", [{**tx, "nonce": hex(nonce)}]))
        return [str(h) for h in self.rpc.batch(calls)]

    def mine(self, n: int) -> None:
        if n > 0:
            started = time.perf_counter()
            self.rpc.call("anvil_mine", hex(n))
            self.mining += time.perf_counter() - started

    def deploy(self, name: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> str:
        sender = self.accounts[0]
        nonce = self.nonces[sender]
        code = load_artifact(name)["bytecode"] + encode(list(types), list(args)).hex()
        self.send([self.tx(sender, None, data=code, gas=5_000_000)])
        return str(get_create_address(sender, nonce))  # type: ignore[arg-type]

    def _contracts(self) -> tuple[str, str, str, str, list[str]]:
        """Deploy USDC, DAI, an unconfigured token and the Forwarder; mint for the payers."""
        accounts = self.accounts
        token_types = ("string", "string", "uint8")
        usdc = self.deploy("TestToken", token_types, ("USD Coin", "USDC", 6))
        dai = self.deploy("TestToken", token_types, ("Dai", "DAI", 18))
        junk = self.deploy("TestToken", token_types, ("Junk", "JUNK", 18))  # not configured
        forwarder = self.deploy("Forwarder")
        self.mine(1)
        payers = accounts[1:9]  # account 9 holds no tokens: its token transfers revert
        mint = "mint(address,uint256)"
        mints = [calldata(mint, ("address", "uint256"), (p, 10**40)) for p in payers]
        self.send(
            [self.tx(accounts[0], t, data=d, gas=200_000) for t in (usdc, dai, junk) for d in mints]
        )
        self.mine(1)
        self._check_code([usdc, dai, junk, forwarder])
        self.usdc, self.dai, self.forwarder, self.payers = usdc, dai, forwarder, payers
        return usdc, dai, junk, forwarder, payers

    def build(self, blocks: int) -> BuiltChain:
        started = time.perf_counter()
        rng = self.rng
        usdc, dai, junk, forwarder, payers = self._contracts()
        specs = self._specs(usdc, dai, junk, forwarder, payers)
        rng.shuffle(specs)
        busy = rng.sample(range(blocks), min(blocks, BUSY_BLOCKS))
        slots: dict[int, list[Spec]] = {}
        for spec in specs:
            slots.setdefault(rng.choice(busy), []).append(spec)
        expected = Expected()
        empty = 0
        for index in range(blocks):
            batch = slots.get(index)
            if not batch:
                empty += 1
                continue
            self.mine(empty)
            empty = 0
            hashes = self.send([s.tx for s in batch])
            for spec, tx_hash in zip(batch, hashes, strict=True):
                expected.sent(spec.pays, tx_hash, reverts=spec.reverts)
            self.mine(1)
        return self._finish(
            expected, empty + TAIL_BLOCKS, (usdc, dai), started, len(specs), len(slots)
        )

    def build_busy(self, blocks: int, noise: int, every: int = 5) -> BuiltChain:
        """``blocks`` blocks of ``noise`` ETH transfers between other addresses each, and a
        payment to the wallet every ``every`` blocks (ERC-20, native, internal in turn)."""
        started = time.perf_counter()
        usdc, dai, _junk, _forwarder, payers = self._contracts()
        expected = Expected()
        kinds = ("usdc", "native", "internal", "dai")
        for index in range(blocks):
            txs = self.noise(noise)
            spec = None
            if index % every == 0:
                spec = self.payment(kinds[(index // every) % len(kinds)], usdc, dai, payers)
                txs.append(spec.tx)
            hashes = self.send(txs)
            if spec is not None:
                expected.sent(spec.pays, hashes[-1], reverts=False)
            self.mine(1)
        sent = blocks * noise + sum(expected.by_kind.values())
        return self._finish(expected, TAIL_BLOCKS, (usdc, dai), started, sent, blocks)

    def _finish(
        self,
        expected: Expected,
        tail: int,
        tokens: tuple[str, str],
        started: float,
        transactions: int,
        busy_blocks: int,
    ) -> BuiltChain:
        """Mine the ``tail`` of empty blocks, check every receipt, describe the chain."""
        self.mine(tail)
        self._check_mined(expected)
        head = int(self.rpc.call("eth_blockNumber"), 16)
        usdc, dai = tokens
        return BuiltChain(
            head=head,
            tokens={"USDC": (usdc, 6), "DAI": (dai, 18)},
            expected=expected,
            transactions=transactions,
            busy_blocks=busy_blocks,
            seconds=time.perf_counter() - started,
            mining=self.mining,
        )

    def noise(self, n: int) -> list[Tx]:
        """``n`` ETH transfers from the payers to other addresses."""
        rng = self.rng
        return [
            self.tx(rng.choice(self.payers), rng.choice(self.others), value=rng.randrange(1, ETH),
                    gas=21_000)
            for _ in range(n)
        ]  # fmt: skip

    def payment(self, kind: str, usdc: str, dai: str, payers: Sequence[str]) -> Spec:
        """One payment to the wallet: ``usdc``/``dai`` (ERC-20), ``native`` or ``internal``."""
        rng, sender = self.rng, self.rng.choice(payers)
        if kind in ("usdc", "dai"):
            amount = rng.randrange(10**6, 5_000 * 10**6) * (10**12 if kind == "dai" else 1)
            data = calldata("transfer(address,uint256)", ("address", "uint256"), (WALLET, amount))
            tx = self.tx(sender, usdc if kind == "usdc" else dai, data=data, gas=100_000)
            return Spec(tx, [("erc20", amount)])
        amount = rng.randrange(10**15, ETH)
        if kind == "native":
            return Spec(self.tx(sender, WALLET, value=amount, gas=21_000), [("native", amount)])
        data = calldata("forward(address)", ("address",), (WALLET,))
        tx = self.tx(sender, self.forwarder, value=amount, data=data, gas=150_000)
        return Spec(tx, [("internal", amount)])

    def _specs(
        self, usdc: str, dai: str, junk: str, forwarder: str, payers: Sequence[str]
    ) -> list[Spec]:
        rng, others = self.rng, self.others
        transfer = "transfer(address,uint256)"

        def erc20(token: str, to: str, amount: int, sender: str | None = None) -> Tx:
            data = calldata(transfer, ("address", "uint256"), (to, amount))
            return self.tx(sender or rng.choice(payers), token, data=data, gas=100_000)

        def eth(to: str, wei: int) -> Tx:
            return self.tx(rng.choice(payers), to, value=wei, gas=21_000)

        def forward(to: str, wei: int, fn: str = "forward(address)") -> Tx:
            data = calldata(fn, ("address",), (to,))
            return self.tx(rng.choice(payers), forwarder, value=wei, data=data, gas=150_000)

        def usdc_amount() -> int:  # 1..5,000 USDC, never 1,000.xxxxxx (the invoices' range)
            while True:
                amount = rng.randrange(10**6, 5_000 * 10**6)
                if not 1_000 * 10**6 <= amount < 1_001 * 10**6:
                    return amount

        def wei() -> int:
            return rng.randrange(10**15, ETH)

        specs: list[Spec] = []
        # 1,000 payments to the wallet
        for _ in range(300):
            amount = usdc_amount()
            specs.append(Spec(erc20(usdc, WALLET, amount), [("erc20", amount)]))
        for _ in range(100):
            amount = rng.randrange(10**18, 5_000 * 10**18)
            specs.append(Spec(erc20(dai, WALLET, amount), [("erc20", amount)]))
        for _ in range(300):
            amount = wei()
            specs.append(Spec(eth(WALLET, amount), [("native", amount)]))
        for _ in range(250):
            amount = wei()
            specs.append(Spec(forward(WALLET, amount), [("internal", amount)]))
        many = "forwardMany(address[],uint256[])"
        for _ in range(25):  # two internal payments and one to someone else, in one tx
            a, b, c = wei(), wei(), wei()
            data = calldata(
                many, ("address[]", "uint256[]"), ([WALLET, rng.choice(others), WALLET], [a, b, c])
            )
            tx = self.tx(rng.choice(payers), forwarder, value=a + b + c, data=data, gas=250_000)
            specs.append(Spec(tx, [("internal", a), ("internal", c)]))
        # 2,000 noise transactions
        for _ in range(700):
            token = rng.choice((usdc, dai))
            specs.append(Spec(erc20(token, rng.choice(others), rng.randrange(1, 10**20)), []))
        for _ in range(100):  # an unconfigured token paid to the wallet
            specs.append(Spec(erc20(junk, WALLET, rng.randrange(1, 10**20)), []))
        for _ in range(700):
            specs.append(Spec(eth(rng.choice(others), wei()), []))
        for _ in range(400):
            specs.append(Spec(forward(rng.choice(others), wei()), []))
        for _ in range(50):  # internal transfer to the wallet, then the tx reverts
            tx = forward(WALLET, wei(), "forwardThenRevert(address)")
            specs.append(Spec(tx, [], reverts=True))
        for _ in range(50):  # a token transfer to the wallet from an account holding none
            tx = erc20(usdc, WALLET, usdc_amount(), sender=self.accounts[9])
            specs.append(Spec(tx, [], reverts=True))
        return specs

    def _check_code(self, addresses: Sequence[str]) -> None:
        codes = self.rpc.batch([("eth_getCode", [a, "latest"]) for a in addresses])
        if any(len(c) <= 2 for c in codes):
            raise SystemExit("bench: a test contract did not deploy")

    def _check_mined(self, expected: Expected) -> None:
        status = self.rpc.call("txpool_status")
        if int(status["pending"], 16) or int(status["queued"], 16):
            raise SystemExit(f"bench: transactions left unmined: {status}")
        hashes = expected.ok + expected.reverted
        statuses: dict[str, int] = {}
        paying = {tx for _, tx, _ in expected.payments}
        for start in range(0, len(hashes), 500):
            part = hashes[start : start + 500]
            receipts = self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in part])
            for h, r in zip(part, receipts, strict=True):
                statuses[h] = int(r["status"], 16)
                if h.lower() in paying:
                    expected.payment_blocks.append(int(r["blockNumber"], 16))
        bad = [h for h in expected.ok if statuses[h] != 1]
        bad += [h for h in expected.reverted if statuses[h] != 0]
        if bad:
            raise SystemExit(f"bench: {len(bad)} transactions did not end as planned: {bad[:3]}")


@dataclass
class Spec:
    tx: Tx
    pays: list[tuple[str, int]]  # (kind, amount) of each payment to the wallet it makes
    reverts: bool = False
