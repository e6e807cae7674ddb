"""What a notification says to a person: a title and a plain-text body for each event type.

``render`` turns a stored event body into words, coping with missing keys, and falls back to
listing the data for event types it does not know; ``severity`` says how alarming it is. Pure
functions over JSON: no channel library is imported here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

WARNING_TYPES = {
    "payment.orphaned",
    "invoice.underpaid",
    "invoice.expired",
    "invoice.needs_review",
    "retainer.lapsed",
    "transfer.unassigned",
    "watcher.degraded",
    "watcher.unexplained_balance",
    "watcher.channel_disabled",
    "watcher.receipt_unconfirmed",
    "watcher.cross_check_mismatch",
}
SUCCESS_TYPES = {"cycle.opened", "payment.finalized", "invoice.paid_late", "watcher.recovered"}
FAILURE_TYPES = {"watcher.finality_violation"}


# --- words -----------------------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _when(value: Any) -> str | None:
    """``2026-03-14 10:22 UTC``, or just ``2026-03-14`` at midnight; unparseable text as is."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if (moment.hour, moment.minute, moment.second) == (0, 0, 0):
        return f"{moment:%Y-%m-%d}"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _money(data: Mapping[str, Any], key: str = "amount") -> str | None:
    amount = _text(data, key)
    if amount is None:
        return None
    asset = _text(data, "asset")
    return f"{amount} {asset}" if asset else amount


def _client(data: Mapping[str, Any], fallback: str = "A client") -> str:
    return _text(data, "client") or _text(data, "retainer_id") or fallback


def _sentence(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _opt(template: str, value: str | None) -> str | None:
    return template.format(value) if value is not None else None


def _tx(data: Mapping[str, Any]) -> list[str]:
    """The transaction line and its explorer link, when known."""
    tx = _text(data, "tx_hash")
    if tx is None:
        return []
    lines = [_sentence(f"Transaction {tx}", _opt("(block {})", _text(data, "block_number")))]
    link = _text(data, "explorer_tx_url")
    if link is None and (base := _text(data, "explorer_url")):
        link = f"{base.rstrip('/')}/tx/{tx}"
    if link:
        lines.append(link)
    return ["\n".join(lines)]


# --- one renderer per event type: (title, paragraphs) -----------------------------------------

Rendered = tuple[str, list[str]]


def _cycle_opened(d: Mapping[str, Any]) -> Rendered:
    client = _client(d)
    month = _text(d, "period_index")
    title = f"{client}: month {month} funded" if month else f"{client}: a month is funded"
    paid = _sentence(
        f"{client} paid",
        f"month {month}" if month else "a month",
        _opt("of retainer {}", _text(d, "retainer_id")),
    )
    amount = _sentence(_money(d), _opt("on {}", _text(d, "chain")))
    first = f"{paid}: {amount}." if amount else f"{paid}."
    start, end = _when(d.get("starts_at")), _when(d.get("ends_at"))
    period = f"The month runs from {start} until {end}." if start and end else None
    cycle, invoice = _text(d, "cycle_id"), _text(d, "invoice_id")
    refs = ", ".join(r for r in (_opt("Cycle {}", cycle), _opt("invoice {}", invoice)) if r)
    second = _sentence(period, f"{refs[:1].upper()}{refs[1:]}." if refs else None)
    return title, [p for p in (first, second) if p] + _tx(d)


def _payment(verb: str, after: str) -> Callable[[Mapping[str, Any]], Rendered]:
    def render(d: Mapping[str, Any]) -> Rendered:
        money = _money(d)
        chain = _opt("on {}", _text(d, "chain"))
        title = _sentence(f"Payment {verb}:", money or "a payment", chain)
        text = _sentence(
            "A payment",
            _opt("of {}", money),
            chain,
            _opt("for invoice {}", _text(d, "invoice_id")),
            verb,
        )
        return title, [f"{text}. {after}", *_tx(d)]

    return render


def _invoice(what: str, tail: Callable[[Mapping[str, Any]], str]) -> Callable[..., Rendered]:
    def render(d: Mapping[str, Any]) -> Rendered:
        invoice = _opt("invoice {}", _text(d, "invoice_id")) or "an invoice"
        return f"{_client(d, 'proofwatch')}: {invoice} {what}", [tail(d), *_tx(d)]

    return render


def _underpaid(d: Mapping[str, Any]) -> str:
    got = _money(d, "paid_amount")
    return _sentence(
        "Invoice",
        _text(d, "invoice_id"),
        f"asks {_money(d) or 'more'};",
        f"{got} has arrived" if got else "not enough has arrived",
        _opt("({} missing)", _money(d, "missing")),
        "and the month is not funded yet.",
    )


def _renewal(d: Mapping[str, Any]) -> Rendered:
    month = _text(d, "period_index")
    title = f"{_client(d)}: invoice for month {month or '?'} issued"
    text = _sentence(
        "Invoice",
        _text(d, "invoice_id"),
        f"asks {_money(d) or 'payment'}",
        _opt("on {}", _text(d, "chain")),
        _opt("to {}", _text(d, "pay_to")),
        _opt("by {}", _when(d.get("due_at"))),
    )
    return title, [f"{text}."]


def _lapsed(d: Mapping[str, Any]) -> Rendered:
    text = _sentence(
        "Retainer",
        _text(d, "retainer_id"),
        "has lapsed:",
        _opt("month {}", _text(d, "last_period_index")) or "the last funded month",
        _opt("ended {}", _when(d.get("ended_at"))) or "ended",
        "and the next month was not paid within the grace period",
        _opt("(invoice {} is still open)", _text(d, "unpaid_invoice_id")),
    )
    return f"{_client(d)}: retainer lapsed", [f"{text}."]


def _transfer(title: str, after: str) -> Callable[[Mapping[str, Any]], Rendered]:
    def render(d: Mapping[str, Any]) -> Rendered:
        money = _money(d) or "A payment"
        chain = _opt("on {}", _text(d, "chain"))
        text = _sentence(money, _opt("from {}", _text(d, "from")), "arrived", chain, after)
        candidates = d.get("candidates")
        if isinstance(candidates, list) and candidates:
            text += " Candidates: " + ", ".join(str(c) for c in candidates) + "."
        if reason := _text(d, "reason"):
            text += f" Reason: {reason}."
        return _sentence(title, money, chain), [text, *_tx(d)]

    return render


def _watcher(what: str, after: str) -> Callable[[Mapping[str, Any]], Rendered]:
    def render(d: Mapping[str, Any]) -> Rendered:
        name = _text(d, "chain")
        chain = name or "a chain"
        reason = _text(d, "reason") or _text(d, "error") or _text(d, "detail")
        subject = f"Chain {name}" if name else "A chain"
        text = _sentence(f"{subject} {what}" + (f": {reason}." if reason else "."), after)
        rest = {k: v for k, v in d.items() if k not in ("chain", "reason", "error", "detail")}
        return f"proofwatch: {chain} {what}", [text, _details(rest)]

    return render


def _channel_disabled(d: Mapping[str, Any]) -> Rendered:
    channel = _text(d, "channel") or "a channel"
    reason = _text(d, "reason") or "410 Gone"
    text = _sentence(
        f"Notification channel {channel} answered {reason} and is disabled.",
        "Its deliveries wait, unsent; after fixing the receiver or the config run",
        f"`proofwatch notify enable {channel}`.",
    )
    rest = {k: v for k, v in d.items() if k not in ("channel", "reason")}
    return f"proofwatch: channel {channel} disabled", [text, _details(rest)]


_RENDERERS: dict[str, Callable[[Mapping[str, Any]], Rendered]] = {
    "cycle.opened": _cycle_opened,
    "payment.detected": _payment("was seen", "It is not final yet; you will hear when it is."),
    "payment.finalized": _payment("is final", "It can no longer be reorganised away."),
    "payment.orphaned": _payment(
        "was dropped by a chain reorganisation", "The invoice waits for payment again."
    ),
    "invoice.paid_late": _invoice(
        "paid late",
        lambda d: (
            _sentence("It was paid after its due date", _opt("({})", _when(d.get("due_at"))))
            + "; the month is funded."
        ),
    ),
    "invoice.underpaid": _invoice("underpaid", _underpaid),
    "invoice.expired": _invoice(
        "expired",
        lambda d: _sentence(
            "Invoice",
            _text(d, "invoice_id"),
            f"for {_money(d) or 'its amount'}",
            _opt("was due {}", _when(d.get("due_at"))),
            "and is unpaid past the grace period; it can still be paid.",
        ),
    ),
    "invoice.renewal_issued": _renewal,
    "invoice.needs_review": _transfer(
        "Payment needs review:",
        "and could not be matched to one invoice: see `proofwatch invoice attach`.",
    ),
    "transfer.unassigned": _transfer(
        "Unassigned payment:",
        "and matches no open invoice: see `proofwatch invoice attach`.",
    ),
    "retainer.lapsed": _lapsed,
    "watcher.degraded": _watcher("is degraded", "Other chains keep being watched."),
    "watcher.recovered": _watcher("has recovered", "Watching resumes where it stopped."),
    "watcher.unexplained_balance": _watcher(
        "has an unexplained balance change", "Check the receiving wallet."
    ),
    "watcher.channel_disabled": _channel_disabled,
    "watcher.finality_violation": _watcher(
        "broke finality", "A block believed final was replaced: check the node."
    ),
    "watcher.receipt_unconfirmed": _watcher(
        "cannot confirm a payment's receipt at finality",
        "It stays unconfirmed and is asked again every poll: check the RPC providers.",
    ),
    "watcher.cross_check_mismatch": _watcher(
        "has RPC providers that disagree about a payment's receipt",
        "It is not final until they agree: check both providers.",
    ),
}


def _details(data: Mapping[str, Any]) -> str:
    lines = []
    for key, value in data.items():
        if value is None or value == "":
            continue
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        lines.append(f"{key}: {shown}")
    return "\n".join(lines)


def render(event: Mapping[str, Any]) -> tuple[str, str]:
    """(title, plain-text body) for a person, from a stored event body (id, type, ..., data)."""
    kind = str(event.get("type") or "event")
    raw = event.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    renderer = _RENDERERS.get(kind)
    if renderer is None:
        title, paragraphs = f"proofwatch: {kind}", [_details(data)]
    else:
        title, paragraphs = renderer(data)
    footer = _sentence(
        f"Event {event.get('id') or '?'} ({kind})", _opt("created {}", _text(event, "created_at"))
    )
    return title, "\n\n".join([*(p for p in paragraphs if p), footer + "."])


def severity(event_type: str) -> str:
    """``failure``, ``warning``, ``success`` or ``info``: how a channel should flag the event."""
    if event_type in FAILURE_TYPES:
        return "failure"
    if event_type in WARNING_TYPES:
        return "warning"
    if event_type in SUCCESS_TYPES:
        return "success"
    return "info"
