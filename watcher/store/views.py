"""The operator SQL views: part of the contract (CONTRACT.md), recreated on every ``init``.

Field names equal the JSON field names. Amounts are decimal strings plus ``*_base_units``
strings; timestamps are ISO 8601 UTC (``2026-11-21T15:21:25Z``); ids are ``RET-1``, ``INV-1``...

The views read the same on SQLite and PostgreSQL: same columns, same values, same text (JSON
columns included, compact as SQLite prints them). Only the few fragments below differ by
dialect (``Fragments``); everything else is SQL both accept.
"""

from __future__ import annotations

from dataclasses import dataclass

DIALECTS = ("sqlite", "postgresql")


def _fmt(col: str, dec: str) -> str:
    """SQLite: SQL that formats base-unit text ``col`` with ``dec`` decimals, trailing zeros
    trimmed."""
    padded = (
        f"substr(replace(hex(zeroblob({dec} + 1)), '00', '0') || {col}, "
        f"-max(length({col}), {dec} + 1))"
    )
    split = f"substr({padded}, 1, length({padded}) - {dec}) || '.' || substr({padded}, -{dec})"
    return f"(CASE WHEN {dec} = 0 THEN {col} ELSE rtrim(rtrim({split}, '0'), '.') END)"


def _fmt_pg(col: str, dec: str) -> str:
    """PostgreSQL: the same as ``_fmt``, by text operations (exact for any size; ``lpad``
    truncates, hence the ``greatest``)."""
    padded = f"lpad({col}, greatest(length({col}), {dec} + 1), '0')"
    split = f"left({padded}, length({padded}) - {dec}) || '.' || right({padded}, {dec})"
    return f"(CASE WHEN {dec} = 0 THEN {col} ELSE rtrim(rtrim({split}, '0'), '.') END)"


def _ts(col: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {col})"


def _ts_pg(col: str) -> str:
    # Timestamps are stored as UTC without a zone on both stores: no conversion happens here.
    return f"""to_char({col}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


def _id(prefix: str, col: str) -> str:
    return f"(CASE WHEN {col} IS NULL THEN NULL ELSE '{prefix}-' || {col} END)"


def _json_object_pg(pairs: list[tuple[str, str]]) -> str:
    """PostgreSQL: compact JSON object text, as SQLite's ``json_object`` prints it (PostgreSQL's
    own JSON output puts spaces after ``:`` and ``,``). ``to_json`` quotes and escapes."""
    parts = [
        f"""'{"," if n else "{"}"{key}":' || coalesce(to_json({value})::text, 'null')"""
        for n, (key, value) in enumerate(pairs)
    ]
    return "(" + " || ".join(parts) + " || '}')"


@dataclass(frozen=True)
class Fragments:
    """The SQL that differs between the two stores."""

    dialect: str

    def fmt(self, col: str, dec: str) -> str:
        return _fmt_pg(col, dec) if self.dialect == "postgresql" else _fmt(col, dec)

    def ts(self, col: str) -> str:
        return _ts_pg(col) if self.dialect == "postgresql" else _ts(col)

    def json_list(self, pairs: list[tuple[str, str]], source: str, order: str) -> str:
        """A JSON array (``[]`` when empty) of one object per row of ``source`` (FROM ...
        WHERE ...), in ``order``."""
        if self.dialect == "postgresql":
            obj = _json_object_pg(pairs)
            return (
                f"(SELECT '[' || coalesce(string_agg({obj}, ',' ORDER BY {order}), '') || ']' "
                f"{source})"
            )
        args = ", ".join(f"'{key}', {value}" for key, value in pairs)
        # SQLite 3.40 has no ORDER BY inside an aggregate: order the rows in a subquery.
        return (
            f"(SELECT json_group_array(json(o)) FROM "
            f"(SELECT json_object({args}) AS o {source} ORDER BY {order}))"
        )

    def json_text(self, col: str) -> str:
        """A stored JSON list of strings, compact (``["a","b"]``)."""
        if self.dialect == "postgresql":
            return (
                "(SELECT '[' || coalesce(string_agg(to_json(e)::text, ',' ORDER BY n), '') || ']' "
                f"FROM jsonb_array_elements_text({col}::jsonb) WITH ORDINALITY AS x (e, n))"
            )
        return f"json({col})"


def views(dialect: str = "sqlite") -> dict[str, str]:
    """Every view's ``CREATE VIEW`` statement for ``dialect`` ("sqlite" or "postgresql")."""
    if dialect not in DIALECTS:
        raise ValueError(f"no operator views for the {dialect!r} dialect")
    q = Fragments(dialect)
    fmt, ts = q.fmt, q.ts

    payment_columns = f"""
    t.chain_id AS chain_id,
    t.tx_hash AS tx_hash,
    t.log_index AS log_index,
    t.block_number AS block_number,
    t.block_hash AS block_hash,
    {ts("t.block_time")} AS block_time,
    t.from_address AS "from",
    t.to_address AS "to",
    t.asset AS asset,
    t.token_address AS token_address,
    {fmt("t.amount", "t.decimals")} AS amount,
    t.amount AS amount_base_units,
    t.status AS status,
    {_id("INV", "a.invoice_id")} AS invoice_id,
    {ts("t.detected_at")} AS detected_at,
    {ts("t.finalized_at")} AS finalized_at
"""

    v_payments = f"""
CREATE VIEW v_payments AS
SELECT {payment_columns}, t.chain AS chain, t.kind AS kind, t.final_block AS final_block,
    t.attribution AS attribution
FROM transfers t
LEFT JOIN allocations a ON a.transfer_id = t.id AND a.active
"""

    payments_json = q.json_list(
        [
            ("chain_id", "t.chain_id"),
            ("tx_hash", "t.tx_hash"),
            ("log_index", "t.log_index"),
            ("block_number", "t.block_number"),
            ("block_hash", "t.block_hash"),
            ("block_time", ts("t.block_time")),
            ("from", "t.from_address"),
            ("to", "t.to_address"),
            ("asset", "t.asset"),
            ("token_address", "t.token_address"),
            ("amount", fmt("t.amount", "t.decimals")),
            ("amount_base_units", "t.amount"),
            ("status", "t.status"),
            ("invoice_id", "'INV-' || a.invoice_id"),
            ("detected_at", ts("t.detected_at")),
            ("finalized_at", ts("t.finalized_at")),
        ],
        "FROM allocations a JOIN transfers t ON t.id = a.transfer_id "
        "WHERE a.invoice_id = i.id AND a.active",
        "a.id",
    )

    v_invoices = f"""
CREATE VIEW v_invoices AS
SELECT
    'INV-' || i.id AS id,
    'RET-' || i.retainer_id AS retainer_id,
    r.client AS client,
    i.kind AS kind,
    i.period_index AS period_index,
    i.chain AS chain,
    i.chain_id AS chain_id,
    i.asset AS asset,
    i.token_address AS token_address,
    {fmt("i.price", "i.decimals")} AS price,
    {fmt("i.amount", "i.decimals")} AS amount,
    i.amount AS amount_base_units,
    i.pay_to AS pay_to,
    i.payment_uri AS payment_uri,
    i.status AS status,
    {ts("i.issued_at")} AS issued_at,
    {ts("i.due_at")} AS due_at,
    {fmt("i.paid_amount", "i.decimals")} AS paid_amount,
    i.paid_amount AS paid_amount_base_units,
    {fmt("i.overpaid_by", "i.decimals")} AS overpaid_by,
    {payments_json} AS payments,
    {_id("CYC", "i.cycle_id")} AS cycle_id,
    i.price AS price_base_units,
    {ts("i.paid_at")} AS paid_at
FROM invoices i JOIN retainers r ON r.id = i.retainer_id
"""

    v_cycles = f"""
CREATE VIEW v_cycles AS
SELECT
    'CYC-' || c.id AS id,
    'RET-' || c.retainer_id AS retainer_id,
    c.period_index AS period_index,
    {ts("c.starts_at")} AS starts_at,
    {ts("c.ends_at")} AS ends_at,
    c.status AS status,
    {_id("INV", "c.funded_by_invoice")} AS funded_by_invoice,
    c.proof_tx_hash AS proof_tx_hash
FROM cycles c
"""

    # Flags read 1/0 on both stores (PostgreSQL's booleans are cast to integer).
    v_status = f"""
CREATE VIEW v_status AS
SELECT
    s.chain AS name,
    s.chain_id AS chain_id,
    s.head AS head,
    s.final_block AS final_block,
    s.cursor AS cursor,
    (CASE WHEN s.head IS NULL OR s.cursor IS NULL THEN NULL ELSE s.head - s.cursor END)
        AS lag_blocks,
    {ts("s.last_poll_at")} AS last_poll_at,
    CAST(s.rpc_ok AS INTEGER) AS rpc_ok,
    s.last_error AS last_error,
    d.pid AS daemon_pid,
    {ts("d.last_heartbeat_at")} AS last_heartbeat_at,
    (SELECT count(*) FROM deliveries WHERE status = 'pending')
        + (SELECT count(*) FROM outbox WHERE NOT fanned_out) AS outbox_pending,
    (SELECT count(*) FROM deliveries WHERE status = 'dead') AS outbox_dead,
    CAST(s.degraded AS INTEGER) AS degraded,
    {ts("s.last_ok_at")} AS last_ok_at,
    {ts("d.stopped_at")} AS daemon_stopped_at,
    s.halted_by AS halted_by,
    {ts("s.cursor_time")} AS cursor_time
FROM chain_state s LEFT JOIN daemon d ON d.id = 1
"""

    v_retainers = f"""
CREATE VIEW v_retainers AS
SELECT
    'RET-' || r.id AS id,
    r.client AS client,
    r.chain AS chain,
    r.chain_id AS chain_id,
    r.asset AS asset,
    r.token_address AS token_address,
    {fmt("r.monthly", "r.decimals")} AS monthly,
    r.monthly AS monthly_base_units,
    r.pay_to AS pay_to,
    {q.json_text("r.payers")} AS payers,
    r.scope AS scope,
    r.scope_cap AS scope_cap,
    r.cadence AS cadence,
    {ts("r.start_at")} AS start_at,
    r.status AS status,
    r.terms_hash AS terms_hash,
    a.approved_by AS approved_by,
    {ts("a.approved_at")} AS approved_at,
    a.terms_hash AS approved_terms_hash,
    {ts("r.created_at")} AS created_at
FROM retainers r LEFT JOIN approvals a ON a.id = r.approval_id
"""

    return {
        "v_retainers": v_retainers,
        "v_payments": v_payments,
        "v_invoices": v_invoices,
        "v_cycles": v_cycles,
        "v_status": v_status,
    }


#: The SQLite views (the embedded default); ``views("postgresql")`` gives PostgreSQL's.
VIEWS: dict[str, str] = views("sqlite")
