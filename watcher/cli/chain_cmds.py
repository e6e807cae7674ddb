"""Commands on the chain and the settled state: scan, tick, attach, transfers, cycles."""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated

import typer

from watcher.cli.common import console, context, print_json, read, real_console
from watcher.errors import BadInput

if TYPE_CHECKING:
    from watcher.ledger.context import Context

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _scan_report_json(report: object) -> dict[str, object]:
    fields = getattr(report, "__dataclass_fields__", {})
    return {name: getattr(report, name) for name in fields}


def _locked(ctx: Context, role: str) -> AbstractContextManager[None]:
    """The daemon's single-instance lock, held while a one-off ``tick`` or ``scan`` runs."""
    from watcher.runtime.locks import command_lock  # only for the commands that scan

    return command_lock(ctx.settings, ctx.engine, ctx.now, role)


chain_app = typer.Typer(help="Chains: resume one halted by a finality violation.")


@chain_app.command("resume")
def chain_resume(
    chain: Annotated[str, typer.Argument(help="Chain name, as in the config.")],
    ack: Annotated[
        str, typer.Option("--ack", help="The watcher.finality_violation event id (EVT-...).")
    ],
    by: Annotated[
        str | None, typer.Option("--by", help="Who looked at it (default: the OS user).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """After a watcher.finality_violation the operator has looked at: scanning resumes.

    The next poll follows the reorg that caused it; final transfers and their proofs are kept
    as they are. Exit 2 for an unknown chain or event, 3 when the event is not that chain's
    violation or the chain is not halted by it.
    """
    from watcher.ledger.halts import resume_chain
    from watcher.logs import configure

    ctx = context()
    configure(ctx.settings.secrets)  # log lines go to stderr; stdout is the answer
    record = resume_chain(ctx.engine, ctx.settings, chain, ack, by or _os_user(), ctx.now())
    if as_json:
        print_json(record)
    else:
        typer.echo(
            f"{record['chain']}: resumed after {record['event_id']} "
            f"(acknowledged by {record['by']} at {record['at']})"
        )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return f"uid {os.getuid()}"


def register(app: typer.Typer, invoice_app: typer.Typer) -> None:
    app.add_typer(chain_app, name="chain")

    @app.command()
    def scan(
        chain: Annotated[str | None, typer.Option("--chain", help="Only this chain.")] = None,
        from_block: Annotated[int | None, typer.Option("--from", help="First block.")] = None,
        to_block: Annotated[int | None, typer.Option("--to", help="Last block.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One-off scan (and settlement) up to the head or --to.

        Refused (exit 1, naming the holder's pid) while a daemon, or a `tick` or another
        `scan`, runs on the same database.
        """
        from watcher.logs import configure
        from watcher.runtime.service import Watcher

        for value, name in ((from_block, "--from"), (to_block, "--to")):
            if value is not None and value < 0:
                raise BadInput(f"{name} {value!r} must be a block number >= 0")
        if from_block is not None and to_block is not None and to_block < from_block:
            raise BadInput(f"--to {to_block} is below --from {from_block}")
        ctx = context()
        configure(ctx.settings.secrets)
        chains = [ctx.settings.chain(chain)] if chain else list(ctx.settings.chains)
        watcher = Watcher(ctx)
        reports = {}
        with _locked(ctx, "scan"):
            for ch in chains:
                if sys.stderr.isatty() and not as_json:
                    from rich.progress import (  # a bar on a terminal only: ~35 ms to import
                        BarColumn,
                        MofNCompleteColumn,
                        Progress,
                        TaskID,
                        TextColumn,
                        TimeRemainingColumn,
                    )

                    with Progress(
                        TextColumn(f"[bold]{ch.name}"),
                        BarColumn(),
                        MofNCompleteColumn(),
                        TimeRemainingColumn(),
                        console=real_console(),
                        transient=True,
                    ) as bar:
                        task = bar.add_task("scan", total=None)

                        def progress(
                            done: int, total: int, bar: Progress = bar, task: TaskID = task
                        ) -> None:
                            bar.update(task, completed=done, total=total)

                        reports[ch.name] = watcher.scan(
                            ch, from_block=from_block, to_block=to_block, progress=progress
                        )
                else:
                    reports[ch.name] = watcher.scan(ch, from_block=from_block, to_block=to_block)
        if as_json:
            print_json({name: _scan_report_json(r) for name, r in reports.items()})
            return
        for name, r in reports.items():
            typer.echo(f"{name}: {_scan_report_json(r)}")

    @app.command()
    def tick(as_json: JsonOpt = False) -> None:
        """One round of every scheduled job (scan each chain, settle, renew, lapse, deliver).

        Refused (exit 1, naming the holder's pid) while a daemon, or another `tick` or
        `scan`, runs on the same database.
        """
        from watcher.logs import configure
        from watcher.runtime.service import Watcher

        ctx = context()
        configure(ctx.settings.secrets)
        with _locked(ctx, "tick"):
            report = Watcher(ctx).tick()
        summary = {
            "scans": {
                name: (r if isinstance(r, str) else _scan_report_json(r))
                for name, r in report.scans.items()
            },
            "renewals": _scan_report_json(report.renewals),
            "delivery": _scan_report_json(report.delivery),
            "failed_chains": report.failed_chains,
        }
        if as_json:
            print_json(summary)
        else:
            for key, value in summary.items():
                typer.echo(f"{key}: {value}")
        if report.failed_chains:
            raise typer.Exit(1)

    @invoice_app.command("attach")
    def invoice_attach(
        invoice: Annotated[str, typer.Argument(help="Invoice id, e.g. INV-1.")],
        txhash: Annotated[str, typer.Argument(help="Transaction hash (0x + 64 hex).")],
        log_index: Annotated[
            int | None, typer.Option("--log-index", help="Which transfer in the tx.")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Claim a transfer for an invoice; verified on chain, then waits for finality."""
        from watcher.ledger import queries
        from watcher.ledger.attach import attach  # the chain adapter: only this command needs it
        from watcher.logs import configure

        ctx = context()
        configure(ctx.settings.secrets)  # log lines go to stderr; stdout is the answer
        transfer = attach(ctx, invoice, txhash, log_index)
        row = queries.invoice(ctx.engine, invoice)
        if as_json:
            print_json(row)
        else:
            typer.echo(
                f"{row['id']}: attached {transfer.tx_hash} ({transfer.kind}) -> {row['status']}"
            )

    @app.command()
    def transfers(
        unassigned: Annotated[
            bool, typer.Option("--unassigned", help="Only inflows matched to no invoice.")
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Inflows seen on chain."""
        from watcher.ledger import queries

        rows = read(lambda source: queries.payments(source, unassigned=unassigned))
        if as_json:
            print_json(rows)
            return
        from rich.table import Table

        table = Table("block", "tx", "from", "amount", "status", "invoice")
        for r in rows:
            table.add_row(
                str(r["block_number"]),
                r["tx_hash"][:18] + "…",
                r["from"][:12] + "…",
                f"{r['amount']} {r['asset']}",
                r["status"],
                r["invoice_id"] or "unassigned",
            )
        console.print(table)

    @app.command()
    def cycles(
        retainer: Annotated[
            str | None, typer.Option("--retainer", help="Only this retainer.")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Funded months."""
        from watcher.ledger import queries

        rows = read(lambda source: queries.cycles(source, retainer=retainer))
        if as_json:
            print_json(rows)
            return
        from rich.table import Table

        table = Table("id", "retainer", "month", "starts", "ends", "status", "invoice", "proof tx")
        for r in rows:
            table.add_row(
                r["id"],
                r["retainer_id"],
                str(r["period_index"]),
                r["starts_at"],
                r["ends_at"],
                r["status"],
                r["funded_by_invoice"] or "",
                (r["proof_tx_hash"] or "")[:18] + "…",
            )
        console.print(table)
