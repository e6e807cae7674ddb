"""Operating commands: ``run`` (the daemon), ``status``, ``notify retry``, ``notify enable``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from watcher.cli.common import context, load, print_json, read
from watcher.errors import WatcherError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from watcher.settings import Settings
    from watcher.store.dbapi import Reader

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
        from watcher.logs import configure
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
        from watcher.runtime.status_doc import health_problems

        settings = load()
        document, now = status_now(settings)
        problems = health_problems(document, settings, now)
        if as_json:
            print_json({**document, "health": {"ok": not problems, "reasons": problems}})
        else:
            from watcher.cli.status_text import print_status

            print_status(document, problems)
        if check and problems:
            raise WatcherError("unhealthy: " + "; ".join(problems))


def status_now(settings: Settings) -> tuple[dict[str, Any], datetime]:
    """The status document and the time it was read at: through the DB-API reader
    (``watcher.runtime.status_read``) when it can answer, else through the engine path
    (``watcher.runtime.status``), which prints the same document and words every error."""
    from watcher.settings import clock_from_env
    from watcher.store.dbapi import Reader

    def document(source: Engine | Reader) -> tuple[dict[str, Any], datetime]:
        now = clock_from_env()()
        if isinstance(source, Reader):
            from watcher.runtime import status_read

            return status_read.status_document(source, settings, now), now
        from watcher.runtime.status import status_document

        return status_document(source, settings, now), now

    return read(document, settings)


@notify_app.command("retry")
def notify_retry(
    event: Annotated[str, typer.Argument(help="Event id, e.g. EVT-3f2a9c...")],
    as_json: JsonOpt = False,
) -> None:
    """Re-queue the dead-lettered deliveries of an event; they are sent again at once."""
    from watcher.logs import configure
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
    from watcher.logs import configure
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
