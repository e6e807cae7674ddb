"""Matching: which invoice an inflow pays, how inflows are allocated, what payments add up to."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from watcher.domain.billing import InvoiceStatus, IssuedAmount, choose_amount, holds_until
from watcher.domain.matching import (
    Allocation,
    Candidate,
    Inflow,
    Match,
    Paid,
    Rule,
    allocate,
    coverage,
    covered_threshold,
    match,
)
from watcher.errors import Refused

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"
OTHER_WALLET = "0x1111111111111111111111111111111111111111"
PAYER_A = "0xAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAaAa"
PAYER_B = "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"
STRANGER = "0x000000000000000000000000000000000000dEaD"
BASE = 8453
MAINNET = 1
PRICE = 1_500_000_000  # 1500 USDC
T0 = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
DUE = T0 + timedelta(days=7)


def tx(n: int) -> str:
    return f"0x{n:064x}"


def inflow(
    n: int = 1,
    *,
    amount: int = PRICE + 1,
    sender: str = STRANGER,
    chain_id: int = BASE,
    asset: str = "USDC",
    to: str = WALLET,
    block: int | None = None,
    log_index: int | None = 0,
) -> Inflow:
    return Inflow(
        uid=f"{chain_id}:{tx(n)}:erc20:{log_index}",
        chain_id=chain_id,
        tx_hash=tx(n),
        log_index=log_index,
        block_number=100 + n if block is None else block,
        from_address=sender,
        to_address=to,
        asset=asset,
        amount=amount,
    )


def invoice(
    id: int = 1,
    *,
    retainer_id: int = 1,
    tag: int = 1,
    price: int = PRICE,
    payers: frozenset[str] = frozenset({PAYER_A}),
    issued_at: datetime = T0,
    chain_id: int = BASE,
    asset: str = "USDC",
    pay_to: str = WALLET,
    attached: frozenset[tuple[str, int | None]] = frozenset(),
    covered: bool = False,
) -> Candidate:
    return Candidate(
        id=id,
        retainer_id=retainer_id,
        chain_id=chain_id,
        asset=asset,
        pay_to=pay_to,
        amount=price + tag,
        price=price,
        issued_at=issued_at,
        payers=payers,
        attached=attached,
        covered=covered,
    )


# --- match: the rules in order --------------------------------------------------------------


def test_attached_tx_hash_wins_over_amount_and_payer() -> None:
    """An operator-attached transfer pays the invoice it was attached to, whatever its amount."""
    attached_to = invoice(
        2, retainer_id=2, tag=2, payers=frozenset(), attached=frozenset({(tx(7), 0)})
    )
    by_amount_and_payer = invoice(1, tag=1, payers=frozenset({PAYER_A}))
    paid = inflow(7, amount=by_amount_and_payer.amount, sender=PAYER_A)

    assert match(paid, [by_amount_and_payer, attached_to]) == Match(Rule.ATTACHED, (2,))


def test_attachment_names_one_transfer_of_a_transaction() -> None:
    """An attachment with a log index matches that log only, not another log of the same tx."""
    attached_to = invoice(1, attached=frozenset({(tx(7), 3)}))

    assert match(inflow(7, log_index=3, amount=5), [attached_to]).rule == Rule.ATTACHED
    assert match(inflow(7, log_index=4, amount=5), [attached_to]).rule == Rule.UNASSIGNED


def test_attached_to_two_invoices_needs_review() -> None:
    """A transfer attached to two invoices is never split or guessed: both go to review."""
    one = invoice(1, tag=1, attached=frozenset({(tx(7), 0)}))
    two = invoice(2, tag=2, attached=frozenset({(tx(7), 0)}))

    result = match(inflow(7, amount=one.amount), [two, one])

    assert result == Match(Rule.REVIEW, (1, 2))
    assert result.invoice_id is None


def test_unique_amount_matches_its_invoice() -> None:
    """An inflow of exactly an invoice's tagged amount pays that invoice, whoever sent it."""
    first = invoice(1, tag=1)
    second = invoice(2, retainer_id=2, tag=2, payers=frozenset({PAYER_B}))

    result = match(inflow(amount=second.amount, sender=STRANGER), [first, second])

    assert result == Match(Rule.AMOUNT, (2,))
    assert result.invoice_id == 2


def test_payer_of_another_retainer_paying_an_amount_needs_review() -> None:
    """Trap 1: a payer of retainer 1 paying retainer 2's exact tagged amount is never credited
    to retainer 2: both retainers' open invoices go to review (it used to pay invoice 2)."""
    own = invoice(1, retainer_id=1, tag=1, payers=frozenset({PAYER_A}))
    other = invoice(2, retainer_id=2, tag=2, payers=frozenset({PAYER_B}))

    result = match(inflow(amount=other.amount, sender=PAYER_A), [own, other])

    assert result == Match(Rule.REVIEW, (1, 2))
    assert "another retainer" in result.why


def test_payer_of_a_retainer_with_nothing_open_still_blocks_the_amount_rule() -> None:
    """A repeated saved payment from retainer 1's payer goes to review even when retainer 1
    has nothing open: who lists a payer is known beyond the open invoices."""
    other = invoice(2, retainer_id=2, tag=2, payers=frozenset({PAYER_B}))

    result = match(inflow(amount=other.amount, sender=PAYER_A), [other], {PAYER_A: frozenset({1})})

    assert result == Match(Rule.REVIEW, (2,))


def test_amount_rule_still_matches_its_own_payer_and_strangers() -> None:
    """The tagged amount paid by the invoice's own payer, or by an unknown sender, pays it."""
    own = invoice(1, retainer_id=1, tag=1, payers=frozenset({PAYER_A}))
    both = {PAYER_A: frozenset({1}), PAYER_B: frozenset({2})}

    assert match(inflow(amount=own.amount, sender=PAYER_A), [own], both).rule == Rule.AMOUNT
    assert match(inflow(amount=own.amount, sender=STRANGER), [own], both).rule == Rule.AMOUNT


def test_payer_round_amount_pays_the_invoice_it_fits_exactly_not_the_oldest() -> None:
    """Trap 2: with an open 1500 month (older) and an open 800 sprint, a round 800 pays the
    sprint and a round 1500 the month (it used to put 800 on the month, then overpay it)."""
    month = invoice(1, tag=1, price=PRICE, issued_at=T0 - timedelta(days=10))
    sprint = invoice(2, tag=2, price=800_000_000, issued_at=T0)
    payments = [
        inflow(1, amount=800_000_000, sender=PAYER_A),
        inflow(2, amount=PRICE, sender=PAYER_A),
    ]

    result = allocate(payments, [month, sprint])

    assert [a.match for a in result] == [Match(Rule.PAYER, (2,)), Match(Rule.PAYER, (1,))]


def test_exact_fit_applies_the_underpay_tolerance() -> None:
    """With a tolerance, a payment within it of a newer invoice's price fits that invoice."""
    month = invoice(1, tag=1, price=PRICE, issued_at=T0 - timedelta(days=10))
    sprint = invoice(2, tag=2, price=800_000_000, issued_at=T0)
    need = covered_threshold(800_000_000, Decimal("0.01"))

    [strict] = allocate([inflow(1, amount=need, sender=PAYER_A)], [month, sprint])
    [tolerant] = allocate(
        [inflow(1, amount=need, sender=PAYER_A)],
        [month, sprint],
        threshold={1: covered_threshold(PRICE, Decimal("0.01")), 2: need},
    )

    assert (strict.match.invoice_id, tolerant.match.invoice_id) == (1, 2)


def test_exact_fit_counts_what_an_invoice_already_has() -> None:
    """A payment that completes a partly paid invoice exactly fits it, not a fresh one."""
    partial = invoice(1, tag=1, price=PRICE, issued_at=T0)
    fresh = invoice(2, tag=2, price=900_000_000, issued_at=T0 - timedelta(days=5))

    [result] = allocate(
        [inflow(1, amount=700_000_000, sender=PAYER_A)], [partial, fresh], {1: 800_000_000}
    )

    assert result.match == Match(Rule.PAYER, (1,))


def test_several_exact_fits_need_review() -> None:
    """A round payment that covers two of the payer's open invoices exactly is never guessed."""
    month = invoice(1, tag=1, issued_at=T0 - timedelta(days=30))
    sprint = invoice(2, tag=2, issued_at=T0)

    result = match(inflow(amount=PRICE, sender=PAYER_A), [month, sprint])

    assert result == Match(Rule.REVIEW, (1, 2))
    assert "several" in result.why


def test_expected_payer_with_round_amount_pays_oldest_uncovered_invoice() -> None:
    """A payer's amount that fits no invoice exactly pays the oldest not-yet-covered one."""
    covered_oldest = invoice(1, tag=1, issued_at=T0 - timedelta(days=60), covered=True)
    oldest_open = invoice(3, tag=3, issued_at=T0 - timedelta(days=30))
    newest = invoice(2, tag=2, issued_at=T0)
    other_retainer = invoice(
        4, retainer_id=2, tag=4, issued_at=T0 - timedelta(days=90), payers=frozenset({PAYER_B})
    )

    result = match(
        inflow(amount=PRICE // 2, sender=PAYER_A),
        [newest, other_retainer, oldest_open, covered_oldest],
    )

    assert result == Match(Rule.PAYER, (3,))


def test_expected_payer_with_only_covered_invoices_is_unassigned() -> None:
    """Once every invoice of the payer's retainer is covered, more money is not pushed onto one."""
    done = invoice(1, covered=True)

    assert match(inflow(amount=PRICE, sender=PAYER_A), [done]).rule == Rule.UNASSIGNED


def test_payer_of_two_retainers_needs_review_listing_both() -> None:
    """A sender listed on two retainers is never guessed: review with both invoices listed."""
    first = invoice(5, retainer_id=1, tag=1, payers=frozenset({PAYER_A}))
    second = invoice(3, retainer_id=2, tag=2, payers=frozenset({PAYER_A, PAYER_B}))

    result = match(inflow(amount=PRICE, sender=PAYER_A), [first, second])

    assert result == Match(Rule.REVIEW, (3, 5))
    assert result.invoice_id is None


def test_two_invoices_with_the_same_amount_need_review() -> None:
    """Two candidates sharing an amount (a broken invariant) give review, never a guess."""
    first = invoice(1, retainer_id=1, tag=1)
    twin = invoice(2, retainer_id=2, tag=1, payers=frozenset({PAYER_B}))

    result = match(inflow(amount=first.amount, sender=PAYER_A), [twin, first])

    assert result == Match(Rule.REVIEW, (1, 2))
    assert result.invoice_id is None


@pytest.mark.parametrize(
    "change",
    [
        {"asset": "USDT"},
        {"chain_id": MAINNET},
        {"to": OTHER_WALLET},
    ],
    ids=["asset", "chain", "wallet"],
)
@pytest.mark.parametrize("amount", [PRICE + 1, PRICE], ids=["tagged", "round"])
def test_other_asset_chain_or_wallet_never_matches(change: dict[str, object], amount: int) -> None:
    """An inflow in another asset, on another chain or to another wallet pays no invoice."""
    target = invoice(1, tag=1, payers=frozenset({PAYER_A}), attached=frozenset({(tx(7), 0)}))
    stray = inflow(7, amount=amount, sender=PAYER_A, **change)

    assert match(stray, [target]) == Match(Rule.UNASSIGNED)


def test_unknown_sender_with_other_amount_is_unassigned() -> None:
    """An unknown sender paying an amount no invoice asks for is unassigned."""
    result = match(inflow(amount=PRICE + 999, sender=STRANGER), [invoice(1), invoice(2, tag=2)])

    assert result == Match(Rule.UNASSIGNED)
    assert result.invoice_id is None


def test_no_invoices_means_unassigned() -> None:
    """With nothing open, every inflow is unassigned."""
    assert match(inflow(amount=PRICE, sender=PAYER_A), []) == Match(Rule.UNASSIGNED)


# --- allocate -------------------------------------------------------------------------------


def test_allocate_counts_a_repeated_transfer_once() -> None:
    """The same transfer handed in twice is allocated once."""
    inv = invoice(1)
    paid = inflow(1, amount=inv.amount)

    assert allocate([paid, paid], [inv]) == [Allocation(paid.uid, Match(Rule.AMOUNT, (1,)))]


def test_allocate_respects_money_already_funded() -> None:
    """An invoice already covered by earlier allocations does not take a payer's next payment."""
    older = invoice(1, tag=1, issued_at=T0 - timedelta(days=30))
    newer = invoice(2, tag=2, issued_at=T0)

    [result] = allocate([inflow(1, amount=PRICE, sender=PAYER_A)], [older, newer], {1: PRICE})

    assert result.match == Match(Rule.PAYER, (2,))


def test_allocate_uses_the_given_threshold() -> None:
    """With a tolerance threshold, a slightly short round payment covers the oldest invoice."""
    older = invoice(1, tag=1, issued_at=T0 - timedelta(days=30))
    newer = invoice(2, tag=2, price=2 * PRICE, issued_at=T0)
    need = covered_threshold(PRICE, Decimal("0.01"))
    payments = [inflow(1, amount=need, sender=PAYER_A), inflow(2, amount=need, sender=PAYER_A)]

    strict = allocate(payments, [older, newer])
    tolerant = allocate(
        payments,
        [older, newer],
        threshold={1: need, 2: covered_threshold(2 * PRICE, Decimal("0.01"))},
    )

    assert [a.match.invoice_id for a in strict] == [1, 1]
    assert [a.match.invoice_id for a in tolerant] == [1, 2]


# Small universes, so that rules collide often.
CHAINS = [BASE, MAINNET]
ASSETS = ["USDC", "ETH"]
WALLETS = [WALLET, OTHER_WALLET]
SENDERS = [PAYER_A, PAYER_B, STRANGER]
PRICES = [1_000, 2_000]


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=0, max_value=6))
    out = []
    for id in range(1, count + 1):
        price = draw(st.sampled_from(PRICES))
        out.append(
            Candidate(
                id=id,
                retainer_id=draw(st.integers(min_value=1, max_value=3)),
                chain_id=draw(st.sampled_from(CHAINS)),
                asset=draw(st.sampled_from(ASSETS)),
                pay_to=draw(st.sampled_from(WALLETS)),
                price=price,
                amount=price + draw(st.integers(min_value=1, max_value=3)),
                issued_at=T0 + timedelta(days=draw(st.integers(min_value=0, max_value=3))),
                payers=frozenset(draw(st.sets(st.sampled_from(SENDERS[:2]), max_size=2))),
                attached=frozenset(
                    draw(
                        st.sets(
                            st.tuples(
                                st.integers(min_value=1, max_value=8).map(tx),
                                st.one_of(st.none(), st.integers(min_value=0, max_value=1)),
                            ),
                            max_size=2,
                        )
                    )
                ),
                covered=draw(st.booleans()),
            )
        )
    return out


@st.composite
def an_inflow(draw: st.DrawFn) -> Inflow:
    chain_id = draw(st.sampled_from(CHAINS))
    n = draw(st.integers(min_value=1, max_value=8))
    log_index = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=1)))
    return Inflow(
        uid=f"{chain_id}:{tx(n)}:{log_index}",
        chain_id=chain_id,
        tx_hash=tx(n),
        log_index=log_index,
        block_number=100 + n,
        from_address=draw(st.sampled_from(SENDERS)),
        to_address=draw(st.sampled_from(WALLETS)),
        asset=draw(st.sampled_from(ASSETS)),
        amount=draw(st.sampled_from(PRICES) | st.integers(min_value=1, max_value=2_003)),
    )


inflow_lists = st.lists(an_inflow(), max_size=12, unique_by=lambda i: i.uid)


def as_tuples(result: list[Allocation]) -> list[tuple[str, str, tuple[int, ...]]]:
    return sorted((a.uid, a.match.rule.value, a.match.invoice_ids) for a in result)


@given(inflows=inflow_lists, invoices=candidates(), data=st.data())
def test_allocate_counts_every_transfer_exactly_once(
    inflows: list[Inflow], invoices: list[Candidate], data: st.DataObject
) -> None:
    """Each transfer appears exactly once in the result, even when handed in twice."""
    repeated = data.draw(st.lists(st.sampled_from(inflows), max_size=4)) if inflows else []

    result = allocate(inflows + repeated, invoices)

    assert Counter(a.uid for a in result) == Counter(i.uid for i in inflows)


@given(inflows=inflow_lists, invoices=candidates())
def test_allocated_sums_equal_the_matched_transfers(
    inflows: list[Inflow], invoices: list[Candidate]
) -> None:
    """Each invoice is allocated exactly the amounts of its matched transfers; nothing is lost."""
    by_uid = {i.uid: i for i in inflows}
    by_id = {c.id: c for c in invoices}

    result = allocate(inflows, invoices)

    allocated: Counter[int] = Counter()
    loose = 0
    for a in result:
        target = a.match.invoice_id
        if target is None:
            assert a.match.rule in (Rule.UNASSIGNED, Rule.REVIEW)
            loose += by_uid[a.uid].amount
            continue
        inv, paid = by_id[target], by_uid[a.uid]
        assert (inv.chain_id, inv.asset, inv.pay_to) == (
            paid.chain_id,
            paid.asset,
            paid.to_address,
        )
        allocated[target] += paid.amount
    assert sum(allocated.values()) + loose == sum(i.amount for i in inflows)
    for target, total in allocated.items():
        matched = [by_uid[a.uid] for a in result if a.match.invoice_id == target]
        payments = [Paid(m.amount, True, T0) for m in matched]
        assert total == sum(m.amount for m in matched)
        assert (
            coverage(
                price=by_id[target].price,
                amount=by_id[target].amount,
                due_at=DUE,
                payments=payments,
                tolerance=Decimal(0),
                current=InvoiceStatus.OPEN,
            ).paid_amount
            == total
        )


@given(
    inflows=inflow_lists.flatmap(lambda xs: st.tuples(st.just(xs), st.permutations(xs))),
    invoices=candidates(),
    retainers_of=st.none()
    | st.dictionaries(
        st.sampled_from(SENDERS), st.frozensets(st.integers(min_value=1, max_value=4), min_size=1)
    ),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.01")]),
)
def test_allocation_does_not_depend_on_arrival_order(
    inflows: tuple[list[Inflow], list[Inflow]],
    invoices: list[Candidate],
    retainers_of: dict[str, frozenset[int]] | None,
    tolerance: Decimal,
) -> None:
    """Any arrival order of the same transfers (and any order of the invoices) gives the same
    allocation, under every rule: amount, payer of another retainer, exact fit, oldest."""
    arrived, shuffled = inflows
    need = {c.id: covered_threshold(c.price, tolerance) for c in invoices}

    def run(xs: list[Inflow], cs: list[Candidate]) -> list[tuple[str, str, tuple[int, ...]]]:
        return as_tuples(allocate(xs, cs, threshold=need, retainers_of=retainers_of))

    assert run(arrived, invoices) == run(shuffled, invoices)
    assert run(arrived, invoices) == run(arrived, list(reversed(invoices)))


@given(
    blocks=st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=2, unique=True),
    ages=st.lists(st.integers(min_value=0, max_value=90), min_size=2, max_size=2, unique=True),
    prices=st.lists(st.integers(min_value=1, max_value=10**12), min_size=2, max_size=2),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.01")]),
    reverse=st.booleans(),
)
def test_payer_two_full_payments_fund_two_invoices_in_any_order(
    blocks: list[int], ages: list[int], prices: list[int], tolerance: Decimal, reverse: bool
) -> None:
    """A payer's two round payments of two open invoices' prices fund both, each its own when
    the prices tell them apart, else oldest first, in any arrival order; never a review unless
    one payment fits both exactly."""
    invoices = [
        invoice(id, tag=id, price=price, issued_at=T0 - timedelta(days=age))
        for id, (age, price) in enumerate(zip(ages, prices, strict=True), start=1)
    ]
    need = {c.id: covered_threshold(c.price, tolerance) for c in invoices}
    payments = [
        inflow(n, amount=c.price, sender=PAYER_A, block=block)
        for n, (block, c) in enumerate(zip(blocks, invoices, strict=True), start=1)
    ]
    # A round price equal to another invoice's tagged amount is the amount rule's (rule 2).
    assume(not any(p.amount == c.amount for p in payments for c in invoices))
    first = min(payments, key=lambda p: p.block_number)
    both_fit = all(need[c.id] <= first.amount <= c.amount for c in invoices)

    result = allocate(list(reversed(payments)) if reverse else payments, invoices, threshold=need)

    funded = {a.uid: a.match for a in result}
    if both_fit:
        assert funded[first.uid] == Match(Rule.REVIEW, (1, 2))
        return
    assert {m.rule for m in funded.values()} == {Rule.PAYER}
    assert sorted(m.invoice_ids[0] for m in funded.values()) == [1, 2]
    fits = [c.id for c in invoices if need[c.id] <= first.amount <= c.amount]
    assert funded[first.uid].invoice_id == fits[0]


@given(
    inflows=inflow_lists,
    invoices=candidates(),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.01")]),
)
def test_payer_inflow_never_overpays_when_another_invoice_fits_exactly(
    inflows: list[Inflow], invoices: list[Candidate], tolerance: Decimal
) -> None:
    """Whenever the payer rule places an inflow, no other open invoice of that payer that it
    would have covered exactly was passed over for one it overpays."""
    need = {c.id: covered_threshold(c.price, tolerance) for c in invoices}
    by_uid = {i.uid: i for i in inflows}
    have = {c.id: 0 for c in invoices}
    covered = {c.id: c.covered for c in invoices}
    by_id = {c.id: c for c in invoices}

    for a in allocate(inflows, invoices, threshold=need):
        paid = by_uid[a.uid]
        target = a.match.invoice_id
        if a.match.rule == Rule.PAYER and target is not None:
            chosen = by_id[target]
            overpays = have[target] + paid.amount > chosen.amount
            rivals = [
                c
                for c in invoices
                if c.id != target
                and not covered[c.id]
                and paid.from_address in c.payers
                and (c.chain_id, c.asset, c.pay_to) == (paid.chain_id, paid.asset, paid.to_address)
                and need[c.id] - have[c.id] <= paid.amount <= c.amount - have[c.id]
            ]
            assert not (overpays and rivals), (a, rivals)
        if target is not None:
            have[target] += paid.amount
            covered[target] = covered[target] or have[target] >= need[target]


# --- unique amounts over time: the cooling window -------------------------------------------

COOLING = 180


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["issue", "pay", "void"]),
            st.sampled_from([1_000, 2_000]),  # a price, or which invoice to pay / void
            st.integers(min_value=0, max_value=120),  # days that pass first
        ),
        max_size=40,
    ),
    cooling=st.sampled_from([0, 30, COOLING]),
)
def test_no_amount_is_reissued_inside_the_cooling_window(
    steps: list[tuple[str, int, int]], cooling: int
) -> None:
    """Issuing, paying and voiding over time, a new invoice never asks for an amount another
    invoice of that wallet and asset still waits for, or used within the cooling window."""
    now = T0
    issued: list[IssuedAmount] = []
    for op, value, days in steps:
        now += timedelta(days=days)
        if op == "issue":
            try:
                amount = choose_amount(value, 4, issued, now=now, cooling_days=cooling)
            except Refused:
                continue  # every one of the 10 tags of 4 decimals is held: refused
            for other in issued:
                until = holds_until(other, cooling)
                assert other.amount != amount or (until is not None and until <= now)
            issued.append(IssuedAmount(amount, InvoiceStatus.OPEN, now))
            continue
        waiting = [i for i, inv in enumerate(issued) if inv.status == InvoiceStatus.OPEN]
        if waiting:
            k = waiting[value % len(waiting)]
            done = InvoiceStatus.PAID if op == "pay" else InvoiceStatus.VOID
            paid_at = now if op == "pay" else None
            issued[k] = IssuedAmount(issued[k].amount, done, issued[k].issued_at, paid_at)


# --- coverage -------------------------------------------------------------------------------

AMOUNT = PRICE + 137


def cover(
    payments: list[Paid],
    *,
    tolerance: str = "0",
    current: InvoiceStatus = InvoiceStatus.OPEN,
    expired: bool = False,
    price: int = PRICE,
    amount: int = AMOUNT,
) -> tuple[InvoiceStatus, int, int]:
    result = coverage(
        price=price,
        amount=amount,
        due_at=DUE,
        payments=payments,
        tolerance=Decimal(tolerance),
        current=current,
        expired=expired,
    )
    return result.status, result.paid_amount, result.overpaid_by


def final(amount: int, at: datetime = T0) -> Paid:
    return Paid(amount, True, at)


def seen(amount: int, at: datetime = T0) -> Paid:
    return Paid(amount, False, at)


def test_exact_amount_final_is_paid() -> None:
    """The exact tagged amount, final, before the due date pays the invoice."""
    assert cover([final(AMOUNT)]) == (InvoiceStatus.PAID, AMOUNT, 0)


def test_enough_but_not_all_final_is_pending() -> None:
    """Enough money allocated but some of it not final yet is pending, never paid."""
    assert cover([seen(AMOUNT)]) == (InvoiceStatus.PENDING, AMOUNT, 0)
    assert cover([final(PRICE // 2), seen(AMOUNT - PRICE // 2)])[0] == InvoiceStatus.PENDING


def test_within_tolerance_is_paid() -> None:
    """With tolerance 0.01, paying 99.5% of the price counts as paid."""
    short = PRICE * 995 // 1000

    assert cover([final(short)], tolerance="0.01") == (InvoiceStatus.PAID, short, 0)


def test_threshold_is_exactly_price_times_one_minus_tolerance() -> None:
    """Covered starts at price × (1 − tolerance), and one base unit less is underpaid."""
    need = covered_threshold(PRICE, Decimal("0.01"))

    assert need == PRICE * 99 // 100
    assert cover([final(need)], tolerance="0.01")[0] == InvoiceStatus.PAID
    assert cover([final(need - 1)], tolerance="0.01")[0] == InvoiceStatus.UNDERPAID


def test_beyond_tolerance_is_underpaid() -> None:
    """Paying less than the tolerance allows leaves the invoice underpaid."""
    short = PRICE * 98 // 100

    assert cover([final(short)], tolerance="0.01") == (InvoiceStatus.UNDERPAID, short, 0)


def test_two_partial_payments_that_add_up_are_paid() -> None:
    """Partial payments add up: two halves of the amount pay the invoice."""
    half = AMOUNT // 2

    assert cover([final(half), final(AMOUNT - half, T0 + timedelta(hours=1))]) == (
        InvoiceStatus.PAID,
        AMOUNT,
        0,
    )


def test_overpaid_is_paid_with_overpaid_by() -> None:
    """Paying more than the amount pays the invoice and reports overpaid_by = sum − amount."""
    assert cover([final(AMOUNT), final(5_000_000)]) == (
        InvoiceStatus.PAID,
        AMOUNT + 5_000_000,
        5_000_000,
    )


def test_round_price_is_paid_with_zero_tolerance() -> None:
    """The unique tag is never owed: the round price pays the invoice even with tolerance 0."""
    assert cover([final(PRICE)], tolerance="0") == (InvoiceStatus.PAID, PRICE, 0)
    assert cover([final(PRICE - 1)], tolerance="0")[0] == InvoiceStatus.UNDERPAID


def test_payment_detected_after_due_is_paid_late() -> None:
    """A payment detected after the due date makes the invoice paid_late."""
    late = coverage(
        price=PRICE,
        amount=AMOUNT,
        due_at=DUE,
        payments=[final(AMOUNT, DUE + timedelta(seconds=1))],
        tolerance=Decimal(0),
        current=InvoiceStatus.EXPIRED,
        expired=True,
    )

    assert (late.status, late.late) == (InvoiceStatus.PAID_LATE, True)
    assert cover([final(AMOUNT, DUE)])[0] == InvoiceStatus.PAID


def test_late_balance_after_an_early_partial_is_paid_late() -> None:
    """When the payment that completes coverage arrives after the due date, it is paid_late."""
    payments = [final(PRICE // 2, DUE + timedelta(days=1)), final(PRICE // 2, T0)]

    assert cover(payments)[0] == InvoiceStatus.PAID_LATE


def test_zero_payments_is_open_or_expired() -> None:
    """With no payments an invoice is open, or expired once flagged so."""
    assert cover([]) == (InvoiceStatus.OPEN, 0, 0)
    assert cover([], current=InvoiceStatus.EXPIRED, expired=True) == (InvoiceStatus.EXPIRED, 0, 0)


def test_needs_review_stays_until_money_covers_it() -> None:
    """An invoice in review stays there until its allocated money covers it."""
    review = InvoiceStatus.NEEDS_REVIEW

    assert cover([], current=review)[0] == review
    assert cover([final(PRICE // 2)], current=review)[0] == review
    assert cover([seen(PRICE)], current=review)[0] == InvoiceStatus.PENDING
    assert cover([final(PRICE)], current=review)[0] == InvoiceStatus.PAID


payment_lists = st.lists(
    st.builds(
        Paid,
        amount=st.integers(min_value=1, max_value=3 * AMOUNT),
        final=st.booleans(),
        paid_at=st.datetimes(
            min_value=datetime(2025, 1, 1),  # hypothesis bounds are naive
            max_value=datetime(2025, 3, 1),
            timezones=st.just(UTC),
        ),
    ),
    max_size=6,
)


@given(
    payments=payment_lists,
    tolerance=st.sampled_from(["0", "0.001", "0.01", "0.05"]),
    current=st.sampled_from([InvoiceStatus.OPEN, InvoiceStatus.NEEDS_REVIEW]),
)
def test_paid_amount_is_the_sum_of_payments(
    payments: list[Paid], tolerance: str, current: InvoiceStatus
) -> None:
    """paid_amount is the sum of the payments and overpaid_by what exceeds the amount."""
    result = coverage(
        price=PRICE,
        amount=AMOUNT,
        due_at=DUE,
        payments=payments,
        tolerance=Decimal(tolerance),
        current=current,
    )
    total = sum(p.amount for p in payments)

    assert result.paid_amount == total
    assert result.final_amount == sum(p.amount for p in payments if p.final)
    assert result.overpaid_by == max(0, total - AMOUNT)
    covered = total >= covered_threshold(PRICE, Decimal(tolerance))
    settled = result.status in (InvoiceStatus.PAID, InvoiceStatus.PAID_LATE)
    assert settled == (covered and all(p.final for p in payments) and bool(payments))
