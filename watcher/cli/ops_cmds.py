"""Operating commands: ``run`` (the daemon), ``status``, ``notify retry``, ``notify enable``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from watcher.cli.common import console, context, print_json
from watcher.errors import WatcherError
from watcher.logs import configure
from watcher.runtime.status import health_problems, parse_ts, status_document

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]

notify_app = typer.Typer(help="Notifications: the outbox and its deliveries.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``run``, ``status`` and the ``notify`` group to the ``proofwatch`` app."""
    app.add_typer(notify_app, name="notify")

    @app.command()
    def run() -> None:
        """The daemon: poll, settle, renew and notify until SIGTERM or SIGINT.

        On a stop signal no new job starts, the running ones finish, and it exits 0. A second
        daemon on the same database is refused (exit 1).
        """
        from watcher.runtime.daemon import Daemon  # APScheduler: only for the daemon

        ctx = context()
        configure(ctx.settings.secrets)
        Daemon(ctx).start()

    @app.command()
    def status(
        as_json: JsonOpt = False,
        check: Annotated[
            bool,
            typer.Option(
                "--check", help="Exit 1 unless the daemon runs and every chain polled recently."
            ),
        ] = False,
    ) -> None:
        """Daemon heartbeat, per-chain head/final/cursor/lag, invoices by status, outbox."""
        ctx = context(readonly=True)
        now = ctx.now()
        document = status_document(ctx.engine, ctx.settings, now)
        problems = health_problems(document, ctx.settings, now)
        if as_json:
            print_json({**document, "health": {"ok": not problems, "reasons": problems}})
        else:
            _print_status(document, problems)
        if check and problems:
            raise WatcherError("unhealthy: " + "; ".join(problems))


@notify_app.command("retry")
def notify_retry(
    event: Annotated[str, typer.Argument(help="Event id, e.g. EVT-3f2a9c...")],
    as_json: JsonOpt = False,
) -> None:
    """Re-queue the dead-lettered deliveries of an event; they are sent again at once."""
    from watcher.notify.outbox import normalise_event_id, retry_dead

    ctx = context()
    configure(ctx.settings.secrets)  # log lines go to stderr; stdout is the answer
    count = retry_dead(ctx.engine, event, ctx.now())
    event_id = normalise_event_id(event)
    if as_json:
        print_json({"event": event_id, "requeued": count})
    else:
        typer.echo(f"{event_id}: {count} dead deliver{'y' if count == 1 else 'ies'} re-queued")


@notify_app.command("enable")
def notify_enable(
    channel: Annotated[str, typer.Argument(help="Channel name as in `status`, e.g. webhook:0")],
    as_json: JsonOpt = False,
) -> None:
    """Enable a channel disabled by a 410 Gone answer; its waiting deliveries go out next run."""
    from watcher.notify.disabled import enable

    ctx = context()
    configure(ctx.settings.secrets)
    pending = enable(ctx.engine, channel.strip())
    if as_json:
        print_json({"channel": channel.strip(), "enabled": True, "pending": pending})
    else:
        typer.echo(
            f"{channel.strip()}: enabled, {pending} pending deliver{'y' if pending == 1 else 'ies'}"
        )


def _dash(value: Any) -> str:
    return "—" if value is None else escape(str(value))


def _ago(value: str | None, now: str) -> str:
    """``"12 s ago"`` for a view timestamp, relative to the document's ``generated_at``."""
    when, at = parse_ts(value), parse_ts(now)
    if when is None or at is None:
        return "never"
    seconds = int((at - when).total_seconds())
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return escape(value or "")


def _print_status(document: dict[str, Any], problems: list[str]) -> None:
    daemon = document["daemon"]
    if daemon["running"]:
        state = f"[green]running[/] pid {daemon['pid']} on {_dash(daemon['host'])}"
    elif daemon["stopped_at"]:
        state = f"[red]stopped[/] at {daemon['stopped_at']}"
    else:
        state = "[red]not running[/]"
    beat = _ago(daemon["last_heartbeat_at"], document["generated_at"])
    console.print(f"daemon   {state}  (last heartbeat {beat})")
    for d in document.get("daemons", []):  # every daemon on the database and its chains
        mark = "[green]running[/]" if d["running"] else "[red]not running[/]"
        held = ", ".join(d["chains"]) or "no chain"
        beat = _ago(d["last_heartbeat_at"], document["generated_at"])
        console.print(
            f"  {escape(d['host'])} pid {d['pid']} {mark} (last heartbeat {beat}): {escape(held)}"
        )
    table = Table("chain", "id", "head", "final", "cursor", "lag", "rpc", "last ok")
    errors = []
    for c in document["chains"]:
        rpc = {True: "[green]ok[/]", False: "[red]failing[/]"}.get(c["rpc_ok"], "not polled")
        if c["degraded"]:
            rpc += " [red]degraded[/]"
        table.add_row(
            _dash(c["name"]) + ("" if c["configured"] else " (not configured)"),
            str(c["chain_id"]),
            _dash(c["head"]),
            _dash(c["final_block"]),
            _dash(c["cursor"]),
            _dash(c["lag_blocks"]),
            rpc,
            _ago(c["last_ok_at"], document["generated_at"]),
        )
        if c["last_error"]:
            errors.append(f"  {_dash(c['name'])}: last error: {escape(c['last_error'])}")
        if c.get("halted_by"):
            errors.append(
                f"  {_dash(c['name'])}: [red]halted[/] by finality violation {c['halted_by']}: "
                f"proofwatch chain resume {_dash(c['name'])} --ack {c['halted_by']}"
            )
        if resumed := c.get("last_resume"):
            errors.append(
                f"  {_dash(c['name'])}: resumed after {resumed['event_id']} by "
                f"{escape(resumed['by'])} at {resumed['at']}"
            )
    console.print(table)
    for line in errors:
        console.print(line)
    counts = " · ".join(f"{k} {v}" for k, v in document["invoices"].items() if v) or "none"
    console.print(f"invoices {counts}")
    outbox = document["outbox"]
    console.print(f"outbox   pending {outbox['pending']} · dead {outbox['dead']}")
    for off in document["disabled_channels"]:
        console.print(
            f"channel  [red]{escape(off['channel'])} disabled[/] since {off['disabled_at']} "
            f"({escape(off['reason'])} on {off['event_id']}), {off['pending']} pending: "
            f"proofwatch notify enable {escape(off['channel'])}"
        )
    for tag in document.get("tags", []):
        warn = "[red]exhausted[/] " if tag["left"] == 0 else ""
        console.print(
            f"tags     {escape(tag['chain'])} {escape(tag['asset'])} {tag['price']}: "
            f"{warn}{tag['used']} used, {tag['left']} left"
        )
    if problems:
        console.print("health   [red]unhealthy[/]: " + escape("; ".join(problems)))
    else:
        console.print("health   [green]ok[/]")
