"""``retainer`` and ``invoice`` commands."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from watcher.cli.common import console, context, print_json, read
from watcher.domain.billing import InvoiceStatus
from watcher.errors import BadInput
from watcher.ids import fmt_id

retainer_app = typer.Typer(help="Retainers: terms a client approves.", no_args_is_help=True)
invoice_app = typer.Typer(help="Invoices: what a client pays.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@retainer_app.command("add")
def retainer_add(
    client: Annotated[str, typer.Option("--client", help="Client name.")],
    chain: Annotated[str, typer.Option("--chain", help="Chain name from the config.")],
    asset: Annotated[str, typer.Option("--asset", help="Asset symbol, e.g. USDC or ETH.")],
    monthly: Annotated[str, typer.Option("--monthly", help="Monthly price, e.g. 1500.")],
    payer: Annotated[
        list[str] | None, typer.Option("--payer", help="Expected payer address (repeatable).")
    ] = None,
    scope: Annotated[str, typer.Option("--scope", help="What the retainer covers.")] = "",
    scope_cap: Annotated[str, typer.Option("--scope-cap", help="e.g. '20 hours'.")] = "",
    start: Annotated[str | None, typer.Option("--start", help="Start date YYYY-MM-DD.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a retainer in status draft and print its id."""
    from watcher.ledger import invoices as ledger
    from watcher.ledger import queries

    ctx = context()
    retainer = ledger.add_retainer(
        ctx,
        client=client,
        chain=chain,
        asset=asset,
        monthly=monthly,
        payers=payer or [],
        scope=scope,
        scope_cap=scope_cap,
        start=start,
    )
    rid = fmt_id("RET", retainer.id) or ""
    if as_json:
        print_json(queries.retainer(ctx.engine, rid))
    else:
        typer.echo(rid)


@retainer_app.command("approve")
def retainer_approve(
    retainer: Annotated[str, typer.Argument(help="Retainer id, e.g. RET-1.")],
    by: Annotated[str, typer.Option("--by", help="Who approved the terms.")],
    note: Annotated[str, typer.Option("--note", help="Free text, e.g. PO number.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Record the client's approval of the current terms (status approved)."""
    from watcher.ledger import invoices as ledger
    from watcher.ledger import queries

    ctx = context()
    approval = ledger.approve_retainer(ctx, retainer, by=by, note=note)
    row = queries.retainer(ctx.engine, retainer)
    if as_json:
        print_json(row)
    else:
        typer.echo(f"{row['id']} approved by {approval.approved_by}: {approval.terms_hash}")


@retainer_app.command("update")
def retainer_update(
    retainer: Annotated[str, typer.Argument(help="Retainer id, e.g. RET-1.")],
    monthly: Annotated[str | None, typer.Option("--monthly", help="New monthly price.")] = None,
    payer: Annotated[
        list[str] | None,
        typer.Option("--payer", help="Expected payer address (repeatable; replaces the list)."),
    ] = None,
    scope: Annotated[str | None, typer.Option("--scope", help="New scope text.")] = None,
    scope_cap: Annotated[str | None, typer.Option("--scope-cap", help="New scope cap.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change the terms; the next invoice waits for a new `retainer approve`."""
    from watcher.ledger import invoices as ledger
    from watcher.ledger import queries

    if monthly is None and payer is None and scope is None and scope_cap is None:
        raise BadInput("nothing to update: give --monthly, --payer, --scope or --scope-cap")
    ctx = context()
    ledger.update_retainer(
        ctx, retainer, monthly=monthly, payers=payer, scope=scope, scope_cap=scope_cap
    )
    row = queries.retainer(ctx.engine, retainer)
    if as_json:
        print_json(row)
        return
    pending = row["terms_hash"] != row["approved_terms_hash"]
    note = "terms changed: approve them again before the next invoice" if pending else "unchanged"
    typer.echo(f"{row['id']} updated ({note})")


@retainer_app.command("list")
def retainer_list(as_json: JsonOpt = False) -> None:
    """All retainers."""
    from watcher.ledger import queries

    rows = read(queries.retainers)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("id", "client", "chain", "monthly", "status", "approved by")
    for r in rows:
        table.add_row(
            r["id"],
            r["client"],
            r["chain"],
            f"{r['monthly']} {r['asset']}",
            r["status"],
            r["approved_by"] or "",
        )
    console.print(table)


@retainer_app.command("show")
def retainer_show(
    retainer: Annotated[str, typer.Argument(help="Retainer id, e.g. RET-1.")],
    as_json: JsonOpt = False,
) -> None:
    """One retainer with its approval, invoices and cycles."""
    from watcher.ledger import queries

    row = read(lambda source: queries.retainer(source, retainer))
    if as_json:
        print_json(row)
        return
    _print_fields(row, skip={"invoices", "cycles"})
    for inv in row["invoices"]:
        typer.echo(f"  {inv['id']} {inv['kind']} {inv['amount']} {inv['asset']} {inv['status']}")
    for cyc in row["cycles"]:
        typer.echo(
            f"  {cyc['id']} month {cyc['period_index']} {cyc['starts_at']} .. "
            f"{cyc['ends_at']} {cyc['status']}"
        )


def _print_fields(row: dict[str, Any], skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    width = max(len(k) for k in row)
    for key, value in row.items():
        if key not in skip:
            typer.echo(f"{key.ljust(width)}  {'' if value is None else value}")


@invoice_app.command("issue")
def invoice_issue(
    retainer: Annotated[str, typer.Argument(help="Retainer id, e.g. RET-1.")],
    kind: Annotated[
        str | None, typer.Option("--kind", help="first_month | renewal | sprint.")
    ] = None,
    amount: Annotated[str | None, typer.Option("--amount", help="Sprint amount.")] = None,
    due: Annotated[str | None, typer.Option("--due", help="Due date YYYY-MM-DD.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue the next invoice: prints the exact amount, the address, the URI and a QR code.

    Transfers the retainer's payers sent before the invoice existed are matched to it at
    once; the output lists them (``early_payments`` in --json)."""
    from watcher.chain.online import make_pool, read_decimals  # only when a token is unverified
    from watcher.ledger import invoices as ledger
    from watcher.ledger import queries
    from watcher.logs import configure

    ctx = context()
    configure(ctx.settings.secrets, level=logging.WARNING)  # warnings to stderr, not stdout
    invoice = ledger.issue_invoice(
        ctx,
        retainer,
        kind=kind,
        amount=amount,
        due=due,
        read_decimals=lambda chain, token: read_decimals(make_pool(chain), token),
    )
    row = queries.invoice(ctx.engine, fmt_id("INV", invoice.id) or "")
    # A new invoice's payments can only be the early ones matched while it was issued.
    early = list(row["payments"])
    if as_json:
        print_json({**row, "early_payments": early})
        return
    typer.echo(f"{row['id']} ({row['kind']}) for {row['client']} on {row['chain']}")
    typer.echo(
        f"  pay exactly: {row['amount']} {row['asset']}  ({row['amount_base_units']} base units)"
    )
    typer.echo(f"  to:          {row['pay_to']}")
    if row["token_address"]:
        typer.echo(f"  token:       {row['token_address']}")
    typer.echo(f"  due:         {row['due_at']}")
    typer.echo(f"  uri:         {row['payment_uri']}")
    for p in early:
        typer.echo(
            f"  early payment matched: {p['tx_hash']} block {p['block_number']} "
            f"{p['amount']} {p['asset']} from {p['from']} ({p['status']})"
        )
    if early or row["status"] != InvoiceStatus.OPEN.value:
        typer.echo(f"  status:      {row['status']}")
    buffer = io.StringIO()
    import segno  # only for the terminal QR of an issued invoice

    segno.make(row["payment_uri"], error="m").terminal(out=buffer, compact=True)
    typer.echo(buffer.getvalue())


@invoice_app.command("list")
def invoice_list(
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    retainer: Annotated[str | None, typer.Option("--retainer", help="Only this retainer.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Invoices, optionally by status or retainer."""
    from watcher.ledger import queries

    if status is not None and status not in {s.value for s in InvoiceStatus}:
        raise BadInput(
            f"status {status!r} must be one of {', '.join(s.value for s in InvoiceStatus)}"
        )
    rows = read(lambda source: queries.invoices(source, status=status, retainer=retainer))
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("id", "retainer", "client", "kind", "month", "amount", "status", "due")
    for r in rows:
        table.add_row(
            r["id"],
            r["retainer_id"],
            r["client"],
            r["kind"],
            str(r["period_index"] or ""),
            f"{r['amount']} {r['asset']}",
            r["status"],
            r["due_at"],
        )
    console.print(table)


@invoice_app.command("show")
def invoice_show(
    invoice: Annotated[str, typer.Argument(help="Invoice id, e.g. INV-1.")],
    fmt: Annotated[
        str, typer.Option("--format", help="text | html (the printable invoice to send).")
    ] = "text",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One invoice with its payments; --format html is the document to send the client."""
    from watcher.ledger import queries

    if fmt not in ("text", "html"):
        raise BadInput(f"--format {fmt!r} must be text or html")
    if output is not None and fmt != "html":
        raise BadInput("-o FILE needs --format html")
    if as_json and fmt == "html":
        raise BadInput("--json and --format html exclude each other")
    if fmt == "html":
        from watcher.cli.proof_cmds import write_out
        from watcher.ledger.invoice_doc import invoice_document
        from watcher.templates.render import render_invoice

        doc = invoice_document(context(readonly=True).engine, invoice)
        write_out(render_invoice(doc), output)
        return
    row = read(lambda source: queries.invoice(source, invoice))
    if as_json:
        print_json(row)
        return
    _print_fields(row, skip={"payments"})
    for p in row["payments"]:
        typer.echo(
            f"  payment {p['tx_hash']} block {p['block_number']} {p['amount']} "
            f"{p['asset']} {p['status']}"
        )


@invoice_app.command("void")
def invoice_void(
    invoice: Annotated[str, typer.Argument(help="Invoice id, e.g. INV-1.")],
    as_json: JsonOpt = False,
) -> None:
    """Void an invoice nothing is allocated to."""
    from watcher.ledger import invoices as ledger
    from watcher.ledger import queries

    ctx = context()
    voided = ledger.void_invoice(ctx, invoice)
    iid = fmt_id("INV", voided.id) or ""
    if as_json:
        print_json(queries.invoice(ctx.engine, iid))
    else:
        typer.echo(f"{iid} void")
