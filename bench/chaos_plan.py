"""The seeded schedule of a chaos run: which invoices exist, what each step of the chain does,
and when the daemon is killed. Pure: no node, no clock; ``build_plan(seed, ...)`` always
returns the same plan for the same arguments, so a run's chain-side actions are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

USDC_DECIMALS = 6
ETH_DECIMALS = 18

#: How invoices are paid, in rotation: USDC invoices by an ERC-20 transfer, ETH invoices by a
#: top-level transfer, an internal call through the Forwarder, or ``forwardMany`` paying the
#: invoice and a stray amount to the wallet in one transaction (two internal inflows).
PAY_KINDS = ("erc20", "native", "internal", "erc20", "native", "internal", "erc20", "many")
NOISE_KINDS = ("erc20", "native", "internal")


@dataclass(frozen=True)
class InvoicePlan:
    """One retainer with its first-month invoice, and how and when it is paid."""

    index: int  # 0-based; the retainer is RET-<index+1>
    pay_kind: str  # erc20 | native | internal | many
    monthly: str  # decimal string, the retainer's price
    pay_step: int  # the step whose block first carries its payment

    @property
    def asset(self) -> str:
        return "USDC" if self.pay_kind == "erc20" else "ETH"


@dataclass(frozen=True)
class Reorg:
    """Replace the last ``depth`` blocks; ``move`` re-includes their transactions (same hashes,
    other blocks), else they vanish."""

    depth: int
    move: bool


@dataclass
class Step:
    """What the driver does in one step, in this order: lag change, reorg, payments and noise
    sent, one block mined, then maybe a kill -9 ``kill_after`` seconds later."""

    index: int
    lag: int | None = None  # set the proxy's lag_blocks to this (None: leave it)
    reorg: Reorg | None = None
    pays: list[int] = field(default_factory=list)  # invoice indexes first paid in this step
    noise: list[tuple[str, int]] = field(default_factory=list)  # (kind, amount in base units)
    kill_after: float | None = None


@dataclass(frozen=True)
class Plan:
    seed: int
    invoices: list[InvoicePlan]
    steps: list[Step]

    @property
    def kills(self) -> int:
        return sum(s.kill_after is not None for s in self.steps)


def noise_amount(rng: random.Random, kind: str) -> int:
    """A stray inflow far below every invoice (USDC invoices ask >= 100, ETH ones >= 0.1)."""
    if kind == "erc20":
        return rng.randint(1, 99) * 10**USDC_DECIMALS + rng.randint(1, 999)
    return rng.randint(1, 9) * 10**15 + rng.randint(1, 999)


def build_plan(
    seed: int,
    *,
    kills: int,
    invoices: int,
    max_lag: int,
    step_seconds: float,
    reorg_rate: float = 0.12,
    noise_rate: float = 0.25,
    lag_rate: float = 0.08,
) -> Plan:
    """The whole run from ``seed``: kills spread 4-16 steps apart, a few quiet steps after the
    last one, reorgs of depth 1-5 from step 6 on, every invoice paid in the first 80 %.

    Each concern draws from its own stream, so switching lag off (``max_lag=0``) or asking
    for more invoices leaves the kills, reorgs and stray inflows of a seed as they were."""
    rng = random.Random(f"{seed}:kills")
    kill_at: dict[int, float] = {}
    step = 2
    for _ in range(kills):
        step += rng.randint(4, 16)
        kill_at[step] = rng.uniform(0, step_seconds)
    total = max(step + 8, 24)
    rng = random.Random(f"{seed}:invoices")
    plans = []
    for i in range(invoices):
        kind = PAY_KINDS[i % len(PAY_KINDS)]
        if kind == "erc20":
            monthly = str(rng.randint(100, 2500))
        else:
            monthly = str(Decimal(rng.randint(10, 99)) / 100)
        plans.append(InvoicePlan(i, kind, monthly, rng.randint(1, int(total * 0.8))))
    steps = [Step(index=n, kill_after=kill_at.get(n)) for n in range(total)]
    lag_rng = random.Random(f"{seed}:lag")
    rng = random.Random(f"{seed}:steps")
    lag_off_at = -1
    for s in steps:
        if max_lag > 0 and s.index == lag_off_at:
            s.lag = 0
        elif max_lag > 0 and s.index > lag_off_at and lag_rng.random() < lag_rate:
            s.lag = lag_rng.randint(1, max_lag)
            lag_off_at = s.index + lag_rng.randint(2, 10)
        if s.index >= 6 and rng.random() < reorg_rate:
            s.reorg = Reorg(depth=rng.randint(1, 5), move=rng.random() < 0.5)
        if rng.random() < noise_rate:
            kind = rng.choice(NOISE_KINDS)
            s.noise.append((kind, noise_amount(rng, kind)))
    for p in plans:
        steps[p.pay_step].pays.append(p.index)
    if max_lag > 0:
        steps[-1].lag = 0
    return Plan(seed=seed, invoices=plans, steps=steps)
