"""What the HTML status page shows: the status document plus the latest retainers, invoices,
cycles and payments, read from the operator views; ``templates/status.html`` lays it out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from watcher.runtime.status import Row, health_problems, rows, status_document
from watcher.settings import Settings
from watcher.templates.render import render_status_page

#: The pill colour of each status value; any other value is ``quiet``.
TONES = {
    "paid": "ok",
    "paid_late": "warn",
    "open": "info",
    "pending": "warn",
    "underpaid": "bad",
    "expired": "bad",
    "needs_review": "bad",
    "void": "quiet",
    "approved": "ok",
    "active": "ok",
    "draft": "quiet",
    "lapsed": "bad",
    "ended": "quiet",
    "closed": "quiet",
    "final": "ok",
    "seen": "warn",
    "orphaned": "bad",
}

#: Column headings whose cells are numbers (right-aligned).
NUMERIC = frozenset({"head", "final", "cursor", "lag", "amount", "month", "block", "monthly"})

_RETAINERS = (
    "SELECT id, client, chain, asset, monthly, status, approved_by, start_at "
    "FROM v_retainers ORDER BY CAST(substr(id, 5) AS INTEGER)"
)
_INVOICES = (
    "SELECT id, retainer_id, client, kind, period_index, chain, asset, amount, paid_amount, "
    "status, issued_at, due_at, paid_at, cycle_id FROM v_invoices "
    "ORDER BY CAST(substr(id, 5) AS INTEGER) DESC LIMIT 50"
)
_CYCLES = (
    "SELECT c.*, i.chain AS chain FROM v_cycles c "
    "LEFT JOIN v_invoices i ON i.id = c.funded_by_invoice "
    "ORDER BY c.starts_at DESC, c.period_index DESC LIMIT 50"
)
_PAYMENTS = (
    'SELECT chain, tx_hash, log_index, block_number, "from", amount, asset, status, '
    "invoice_id, detected_at FROM v_payments "
    "ORDER BY block_number DESC, log_index DESC NULLS LAST LIMIT 20"
)


def page_context(engine: Engine, settings: Settings, now: datetime) -> dict[str, Any]:
    """The values ``status.html`` renders, as plain data (no markup)."""
    doc = status_document(engine, settings, now)
    reasons = health_problems(doc, settings, now)
    retainers = rows(engine, _RETAINERS)
    counts = doc["invoices"]
    return {
        "generated_at": doc["generated_at"],
        "daemon": doc["daemon"],
        "daemons": doc["daemons"],
        "reasons": reasons,
        "warnings": [*reasons, *map(_disabled_warning, doc["disabled_channels"])],
        "cards": [
            (sum(counts.values()), "invoices"),
            (counts.get("open", 0) + counts.get("pending", 0), "awaiting payment"),
            (counts.get("paid", 0) + counts.get("paid_late", 0), "paid"),
            (counts.get("needs_review", 0) + counts.get("underpaid", 0), "need attention"),
            (doc["outbox"]["pending"], "notifications queued"),
            (doc["outbox"]["dead"], "notifications dead"),
        ],
        "chains": doc["chains"],
        "retainers": retainers,
        "clients": {r["id"]: r["client"] for r in retainers},
        "invoices": rows(engine, _INVOICES),
        "cycles": rows(engine, _CYCLES),
        "payments": rows(engine, _PAYMENTS),
        "explorers": {
            c.name: c.explorer_url.rstrip("/") for c in settings.chains if c.explorer_url
        },
        "tones": TONES,
        "numeric": NUMERIC,
    }


def _disabled_warning(channel: Row) -> str:
    return (
        f"notification channel {channel['channel']} disabled since {channel['disabled_at']} "
        f"({channel['reason']} on {channel['event_id']}), {channel['pending']} pending: "
        f"proofwatch notify enable {channel['channel']}"
    )


def render_page(engine: Engine, settings: Settings, now: datetime) -> str:
    """The HTML status page: chains, retainers, invoices, cycles, recent payments."""
    return render_status_page(page_context(engine, settings, now))
