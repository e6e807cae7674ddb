"""``export payments``: the bookkeeper's statement as CSV or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from watcher.cli.common import context
from watcher.errors import BadInput

export_app = typer.Typer(help="Statements for the bookkeeper.", no_args_is_help=True)


@export_app.command("payments")
def export_payments(
    start: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD or ISO 8601 UTC).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last day, inclusive (YYYY-MM-DD or ISO 8601).")
    ] = None,
    retainer: Annotated[str | None, typer.Option("--retainer", help="Only this retainer.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | json.")] = "csv",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE.")] = None,
) -> None:
    """One row per final payment, by block time: client, invoice, month, amount, tx, link."""
    import json

    from watcher.cli.proof_cmds import write_out
    from watcher.ledger.export import payment_rows, to_csv

    fmt = "json" if as_json else fmt
    if fmt not in ("csv", "json"):
        raise BadInput(f"--format {fmt!r} must be csv or json")
    ctx = context(readonly=True)
    rows = payment_rows(ctx.engine, ctx.settings, start=start, end=end, retainer=retainer)
    text = to_csv(rows) if fmt == "csv" else json.dumps(rows, indent=2) + "\n"
    write_out(text, output)
