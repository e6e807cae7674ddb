"""The operator SQL views: part of the contract (CONTRACT.md), recreated on every ``init``.

Field names equal the JSON field names. Amounts are decimal strings plus ``*_base_units``
strings; timestamps are ISO 8601 UTC (``2026-11-21T15:21:25Z``); ids are ``RET-1``, ``INV-1``...
"""

from __future__ import annotations


def _fmt(col: str, dec: str) -> str:
    """SQL that formats base-unit text ``col`` with ``dec`` decimals, trailing zeros trimmed."""
    padded = (
        f"substr(replace(hex(zeroblob({dec} + 1)), '00', '0') || {col}, "
        f"-max(length({col}), {dec} + 1))"
    )
    split = f"substr({padded}, 1, length({padded}) - {dec}) || '.' || substr({padded}, -{dec})"
    return f"(CASE WHEN {dec} = 0 THEN {col} ELSE rtrim(rtrim({split}, '0'), '.') END)"


def _ts(col: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {col})"


def _id(prefix: str, col: str) -> str:
    return f"(CASE WHEN {col} IS NULL THEN NULL ELSE '{prefix}-' || {col} END)"


_PAYMENT_COLUMNS = f"""
    t.chain_id AS chain_id,
    t.tx_hash AS tx_hash,
    t.log_index AS log_index,
    t.block_number AS block_number,
    t.block_hash AS block_hash,
    {_ts("t.block_time")} AS block_time,
    t.from_address AS "from",
    t.to_address AS "to",
    t.asset AS asset,
    t.token_address AS token_address,
    {_fmt("t.amount", "t.decimals")} AS amount,
    t.amount AS amount_base_units,
    t.status AS status,
    {_id("INV", "a.invoice_id")} AS invoice_id,
    {_ts("t.detected_at")} AS detected_at,
    {_ts("t.finalized_at")} AS finalized_at
"""

V_PAYMENTS = f"""
CREATE VIEW v_payments AS
SELECT {_PAYMENT_COLUMNS}, t.chain AS chain, t.kind AS kind, t.final_block AS final_block,
    t.attribution AS attribution
FROM transfers t
LEFT JOIN allocations a ON a.transfer_id = t.id AND a.active = 1
"""

_PAYMENTS_JSON = f"""
    (SELECT json_group_array(json_object(
        'chain_id', t.chain_id, 'tx_hash', t.tx_hash, 'log_index', t.log_index,
        'block_number', t.block_number, 'block_hash', t.block_hash,
        'block_time', {_ts("t.block_time")},
        'from', t.from_address, 'to', t.to_address, 'asset', t.asset,
        'token_address', t.token_address, 'amount', {_fmt("t.amount", "t.decimals")},
        'amount_base_units', t.amount, 'status', t.status, 'invoice_id', 'INV-' || a.invoice_id,
        'detected_at', {_ts("t.detected_at")}, 'finalized_at', {_ts("t.finalized_at")}))
     FROM allocations a JOIN transfers t ON t.id = a.transfer_id
     WHERE a.invoice_id = i.id AND a.active = 1)
"""

V_INVOICES = f"""
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
    {_fmt("i.price", "i.decimals")} AS price,
    {_fmt("i.amount", "i.decimals")} AS amount,
    i.amount AS amount_base_units,
    i.pay_to AS pay_to,
    i.payment_uri AS payment_uri,
    i.status AS status,
    {_ts("i.issued_at")} AS issued_at,
    {_ts("i.due_at")} AS due_at,
    {_fmt("i.paid_amount", "i.decimals")} AS paid_amount,
    i.paid_amount AS paid_amount_base_units,
    {_fmt("i.overpaid_by", "i.decimals")} AS overpaid_by,
    {_PAYMENTS_JSON} AS payments,
    {_id("CYC", "i.cycle_id")} AS cycle_id,
    i.price AS price_base_units,
    {_ts("i.paid_at")} AS paid_at
FROM invoices i JOIN retainers r ON r.id = i.retainer_id
"""

V_CYCLES = f"""
CREATE VIEW v_cycles AS
SELECT
    'CYC-' || c.id AS id,
    'RET-' || c.retainer_id AS retainer_id,
    c.period_index AS period_index,
    {_ts("c.starts_at")} AS starts_at,
    {_ts("c.ends_at")} AS ends_at,
    c.status AS status,
    {_id("INV", "c.funded_by_invoice")} AS funded_by_invoice,
    c.proof_tx_hash AS proof_tx_hash
FROM cycles c
"""

V_STATUS = f"""
CREATE VIEW v_status AS
SELECT
    s.chain AS name,
    s.chain_id AS chain_id,
    s.head AS head,
    s.final_block AS final_block,
    s.cursor AS cursor,
    (CASE WHEN s.head IS NULL OR s.cursor IS NULL THEN NULL ELSE s.head - s.cursor END)
        AS lag_blocks,
    {_ts("s.last_poll_at")} AS last_poll_at,
    s.rpc_ok AS rpc_ok,
    s.last_error AS last_error,
    d.pid AS daemon_pid,
    {_ts("d.last_heartbeat_at")} AS last_heartbeat_at,
    (SELECT count(*) FROM deliveries WHERE status = 'pending')
        + (SELECT count(*) FROM outbox WHERE fanned_out = 0) AS outbox_pending,
    (SELECT count(*) FROM deliveries WHERE status = 'dead') AS outbox_dead,
    s.degraded AS degraded,
    {_ts("s.last_ok_at")} AS last_ok_at,
    {_ts("d.stopped_at")} AS daemon_stopped_at,
    {_ts("s.cursor_time")} AS cursor_time
FROM chain_state s LEFT JOIN daemon d ON d.id = 1
"""

V_RETAINERS = f"""
CREATE VIEW v_retainers AS
SELECT
    'RET-' || r.id AS id,
    r.client AS client,
    r.chain AS chain,
    r.chain_id AS chain_id,
    r.asset AS asset,
    r.token_address AS token_address,
    {_fmt("r.monthly", "r.decimals")} AS monthly,
    r.monthly AS monthly_base_units,
    r.pay_to AS pay_to,
    json(r.payers) AS payers,
    r.scope AS scope,
    r.scope_cap AS scope_cap,
    r.cadence AS cadence,
    {_ts("r.start_at")} AS start_at,
    r.status AS status,
    r.terms_hash AS terms_hash,
    a.approved_by AS approved_by,
    {_ts("a.approved_at")} AS approved_at,
    a.terms_hash AS approved_terms_hash,
    {_ts("r.created_at")} AS created_at
FROM retainers r LEFT JOIN approvals a ON a.id = r.approval_id
"""

VIEWS: dict[str, str] = {
    "v_retainers": V_RETAINERS,
    "v_payments": V_PAYMENTS,
    "v_invoices": V_INVOICES,
    "v_cycles": V_CYCLES,
    "v_status": V_STATUS,
}
