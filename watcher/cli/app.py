"""The ``proofwatch`` Typer application and its entry point."""

from __future__ import annotations

import atexit
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import typer.main

from watcher.cli import chain_cmds, export_cmds, ledger_cmds, ops_cmds, proof_cmds
from watcher.cli.common import GLOBALS, context, fail, load, print_json
from watcher.errors import WatcherError


def _new_app() -> typer.Typer:
    return typer.Typer(
        name="proofwatch",
        help="Watch-only payment-proof watcher for monthly retainers paid on EVM chains.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


app = _new_app()
config_app = typer.Typer(help="Validate the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(ledger_cmds.retainer_app, name="retainer")
app.add_typer(ledger_cmds.invoice_app, name="invoice")
app.add_typer(proof_cmds.proof_app, name="proof")
app.add_typer(export_cmds.export_app, name="export")
chain_cmds.register(app, ledger_cmds.invoice_app)
ops_cmds.register(app)


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", help="Config file (default $WATCHER_CONFIG).")
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help=".env file (default: beside the config).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Global options; they may also be given after the command name."""
    GLOBALS.config = config if config is not None else GLOBALS.config
    GLOBALS.env_file = env_file if env_file is not None else GLOBALS.env_file
    GLOBALS.debug = debug or GLOBALS.debug


@app.command()
def init() -> None:
    """Create or migrate the database; safe to repeat."""
    from watcher.store.db import make_engine, migrate

    settings = load()
    old, new = migrate(make_engine(settings.database_url))
    if old is None:
        typer.echo(f"created database at schema version {new}")
    elif old == new:
        typer.echo(f"database is up to date (schema version {new})")
    else:
        typer.echo(f"migrated database from schema version {old} to {new}")


@config_app.command("check")
def config_check(
    online: Annotated[
        bool, typer.Option("--online", help="Also ask each RPC for its chain id and tokens.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Validate the configuration; with --online also check chain ids and token decimals."""
    settings = load()
    report: dict[str, object] = {"ok": True, "config": str(settings.config_path), "chains": []}
    if online:
        from watcher.chain.online import check_online  # needs the chain adapter

        report["chains"] = check_online(settings)
    else:
        report["chains"] = [{"name": c.name, "chain_id": c.chain_id} for c in settings.chains]
    if as_json:
        print_json(report)
    else:
        typer.echo(f"config OK: {settings.config_path}")
        for chain in settings.chains:
            typer.echo(f"  chain {chain.name} (id {chain.chain_id}) -> {chain.receiving_address}")


# Global options may follow the command name: move them to the front for Typer.
_GLOBAL_WITH_VALUE = ("--config", "--env-file")


def _hoist_globals(argv: list[str]) -> list[str]:
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 2
            continue
        if arg.startswith(tuple(f"{g}=" for g in _GLOBAL_WITH_VALUE)) or arg == "--debug":
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


# Typer >= 0.20 vendors click as ``typer._click``: its exceptions are not click's own. Plain
# click's can only be raised once something imported click (typer itself does not): it is not
# imported here for them (about 10 ms of every command's start-up).
def _with_click(name: str, *ours: type[BaseException]) -> tuple[type[BaseException], ...]:
    """``ours``, plus ``click.exceptions.<name>`` when click is loaded."""
    click = sys.modules.get("click")
    theirs = getattr(getattr(click, "exceptions", None), name, None)
    return ours if theirs is None else (*ours, theirs)


class _NoTyperError(Exception):
    """Stands for ``typer.TyperException`` where Typer has none (before 0.20: click's)."""


_TYPER_ERROR: type[Exception] = getattr(typer, "TyperException", _NoTyperError)


def _named_command(args: list[str]) -> str | None:
    """The top-level command or group ``args`` run, when only hoisted global options come
    before it; None when anything else does (``--help``, an unknown option) or none is named."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _GLOBAL_WITH_VALUE:
            i += 2
        elif arg == "--debug" or arg.startswith(tuple(f"{g}=" for g in _GLOBAL_WITH_VALUE)):
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def _app_for(args: list[str]) -> typer.Typer:
    """The app that runs ``args``.

    Typer turns every registered command into a click command before it parses anything
    (12-25 ms here for all of them, 1 ms for one). When ``args`` name a top-level command or
    group, only that one is turned: a copy of the app with the root options and that command
    or group alone, so its parsing, help and errors are the same. Anything else (no command,
    ``--help`` first, a mistyped name) runs the whole app, whose help and "No such command"
    answer list every command.
    """
    name = _named_command(args)
    commands = [
        c
        for c in app.registered_commands
        if c.callback is not None
        and (c.name or typer.main.get_command_name(c.callback.__name__)) == name
    ]
    groups = [g for g in app.registered_groups if g.name == name]
    if name is None or not (commands or groups):
        return app
    only = _new_app()
    only.registered_callback = app.registered_callback
    only.registered_commands = commands
    only.registered_groups = groups
    return only


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit codes 0/1/2/3 and one-line errors (tracebacks only with --debug).

    Without ``argv`` it runs the process's own command line (``proofwatch``, ``python -m
    watcher``) and ends the process itself (``_end_process``); with ``argv`` (a caller in the
    same process) it raises ``SystemExit`` as ``sys.exit`` does."""
    code = _run(_hoist_globals(list(sys.argv[1:] if argv is None else argv)))
    if argv is None:
        _end_process(code)
    sys.exit(code)


def _run(args: list[str]) -> int:
    """Run ``args``; the process's exit code."""
    debug = "--debug" in args
    try:
        # Without standalone mode a command's ``raise typer.Exit(n)`` comes back as the result.
        result = _app_for(args)(args=args, prog_name="proofwatch", standalone_mode=False)
    except WatcherError as exc:
        if debug:
            traceback.print_exc()
        return fail(exc)
    except _with_click("Exit", typer.Exit) as exc:
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except _with_click("ClickException", _TYPER_ERROR) as exc:
        message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        if message:  # empty when the help was shown instead (no arguments)
            sys.stderr.write(f"proofwatch: error: {message}\n")
        return 2
    except _with_click("Abort", typer.Abort):
        sys.stderr.write("proofwatch: aborted\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, exit 1, traceback with --debug
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"proofwatch: internal error: {type(exc).__name__}: {exc}\n")
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _end_process(code: int) -> NoReturn:
    """End the process with ``code`` as the interpreter's own exit would, without its teardown.

    At exit CPython frees every loaded module and collects their garbage: once SQLAlchemy,
    SQLModel and pydantic are loaded that is about 0.1 s of every command (issue 11), to free
    memory the OS takes back at once anyway. What that exit does that matters is done here:
    the output flushed, the ``atexit`` hooks run (logging's, weakref finalizers), the engines
    disposed (``watcher.store.db.dispose_engines``: SQLite connections closed, so SQLite
    checkpoints and removes its WAL file as before). While a non-daemon thread still runs
    (the interpreter would wait for it), under a profiler or tracer (``python -m cProfile``
    writes its report after the program returns), or when the output cannot be flushed (a
    closed pipe: the interpreter reports it and exits 120), it is the interpreter's own exit.
    """
    waiting = any(
        t.is_alive() and not t.daemon and t is not threading.main_thread()
        for t in threading.enumerate()
    )
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if not waiting and not watched and _flushed():
        atexit._run_exitfuncs()
        db = sys.modules.get("watcher.store.db")
        if db is not None:
            db.dispose_engines()
        if _flushed():
            os._exit(code)
    sys.exit(code)


def _flushed() -> bool:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return False
    return True


__all__ = ["app", "context", "main"]
