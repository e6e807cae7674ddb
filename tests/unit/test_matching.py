"""Matching: which invoice an inflow pays, how inflows are allocated, what payments add up to."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.domain.billing import InvoiceStatus
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


def test_unique_amount_wins_over_expected_payer() -> None:
    """A payer who pays another invoice's exact tagged amount pays that invoice, not their own."""
    own = invoice(1, retainer_id=1, tag=1, payers=frozenset({PAYER_A}))
    other = invoice(2, retainer_id=2, tag=2, payers=frozenset({PAYER_B}))

    assert match(inflow(amount=other.amount, sender=PAYER_A), [own, other]) == Match(
        Rule.AMOUNT, (2,)
    )


def test_expected_payer_with_round_amount_pays_oldest_uncovered_invoice() -> None:
    """A payer's round amount pays the oldest not-yet-covered invoice of their retainer."""
    covered_oldest = invoice(1, tag=1, issued_at=T0 - timedelta(days=60), covered=True)
    oldest_open = invoice(3, tag=3, issued_at=T0 - timedelta(days=30))
    newest = invoice(2, tag=2, issued_at=T0)
    other_retainer = invoice(
        4, retainer_id=2, tag=4, issued_at=T0 - timedelta(days=90), payers=frozenset({PAYER_B})
    )

    result = match(
        inflow(amount=PRICE, sender=PAYER_A), [newest, other_retainer, oldest_open, covered_oldest]
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
    newer = invoice(2, tag=2, issued_at=T0)
    need = covered_threshold(PRICE, Decimal("0.01"))
    payments = [inflow(1, amount=need, sender=PAYER_A), inflow(2, amount=need, sender=PAYER_A)]

    strict = allocate(payments, [older, newer])
    tolerant = allocate(payments, [older, newer], threshold={1: need, 2: need})

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
)
def test_allocation_does_not_depend_on_arrival_order(
    inflows: tuple[list[Inflow], list[Inflow]], invoices: list[Candidate]
) -> None:
    """Any arrival order of the same transfers gives the same allocation."""
    arrived, shuffled = inflows

    assert as_tuples(allocate(arrived, invoices)) == as_tuples(allocate(shuffled, invoices))
    assert as_tuples(allocate(arrived, invoices)) == as_tuples(
        allocate(arrived, list(reversed(invoices)))
    )


@given(
    blocks=st.lists(st.integers(min_value=1, max_value=50), min_size=2, max_size=2, unique=True),
    ages=st.lists(st.integers(min_value=0, max_value=90), min_size=2, max_size=2, unique=True),
    price=st.integers(min_value=1, max_value=10**12),
    tolerance=st.sampled_from([Decimal(0), Decimal("0.01")]),
    reverse=st.booleans(),
)
def test_payer_two_full_payments_fund_two_invoices_oldest_first(
    blocks: list[int], ages: list[int], price: int, tolerance: Decimal, reverse: bool
) -> None:
    """A payer's two full round payments fund both open invoices, oldest first, in any order."""
    invoices = [
        invoice(id, tag=id, price=price, issued_at=T0 - timedelta(days=age))
        for id, age in enumerate(ages, start=1)
    ]
    oldest = min(invoices, key=lambda c: c.issued_at).id
    payments = [
        inflow(n, amount=price, sender=PAYER_A, block=block)
        for n, block in enumerate(blocks, start=1)
    ]
    first_on_chain = min(payments, key=lambda p: p.block_number).uid
    need = {c.id: covered_threshold(c.price, tolerance) for c in invoices}

    result = allocate(list(reversed(payments)) if reverse else payments, invoices, threshold=need)

    funded = {a.uid: a.match for a in result}
    assert {m.rule for m in funded.values()} == {Rule.PAYER}
    assert sorted(m.invoice_ids[0] for m in funded.values()) == [1, 2]
    assert funded[first_on_chain].invoice_id == oldest


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
