"""The chaos run's seeded plan (bench/chaos_plan.py): reproducible, and within its promises."""

from __future__ import annotations

from bench.chaos_plan import PAY_KINDS, Plan, build_plan


def plan(seed: int, *, kills: int = 30, invoices: int = 24, max_lag: int = 8) -> Plan:
    return build_plan(seed, kills=kills, invoices=invoices, max_lag=max_lag, step_seconds=0.5)


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    """A chaos run's chain-side actions are fixed by its seed alone."""
    assert plan(1) == plan(1)
    assert plan(1) != plan(2)


def test_switching_lag_off_leaves_kills_reorgs_and_payments_as_they_were() -> None:
    """``--max-lag 0`` changes only the lag windows of a seed's plan."""
    with_lag, without = plan(4), plan(4, max_lag=0)
    assert with_lag.invoices == without.invoices
    for a, b in zip(with_lag.steps, without.steps, strict=True):
        assert (a.kill_after, a.reorg, a.pays, a.noise) == (b.kill_after, b.reorg, b.pays, b.noise)
        assert b.lag is None


def test_kills_reorgs_and_lag_stay_within_what_the_run_promises() -> None:
    """Exactly --kills kill steps, each moment inside its step; reorgs 1-5 deep and never in
    the first 6 steps; lag windows 1..max_lag that end switched off."""
    p = plan(3)
    kills = [s for s in p.steps if s.kill_after is not None]
    assert len(kills) == p.kills == 30
    assert all(0 <= (s.kill_after or 0) <= 0.5 for s in kills)
    reorgs = [s for s in p.steps if s.reorg is not None]
    assert reorgs and all(s.index >= 6 for s in reorgs)
    assert {s.reorg.depth for s in reorgs if s.reorg} <= {1, 2, 3, 4, 5}
    lags = [s.lag for s in p.steps if s.lag is not None]
    assert lags and all(0 <= lag <= 8 for lag in lags) and p.steps[-1].lag == 0
    assert all(s.lag is None for s in plan(3, kills=5, invoices=4, max_lag=0).steps)


def test_every_invoice_is_paid_once_early_enough_with_every_kind() -> None:
    """Each invoice has one payment step in the first 80 % of the run, USDC invoices are paid
    by ERC-20 and ETH ones natively or internally, and all payment kinds occur."""
    p = plan(5)
    paid = sorted(i for s in p.steps for i in s.pays)
    assert paid == list(range(24))
    assert all(inv.pay_step <= int(len(p.steps) * 0.8) for inv in p.invoices)
    assert {inv.pay_kind for inv in p.invoices} == set(PAY_KINDS)
    assert all((inv.asset == "USDC") == (inv.pay_kind == "erc20") for inv in p.invoices)
