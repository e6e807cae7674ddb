"""The CLI turns only the named command into a click command (start-up, issue 11): what it
parses, prints as help and refuses is what the whole app does."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from watcher.cli.app import _app_for, app

NAMES = sorted(
    [
        typer.main.get_command_name(c.callback.__name__)
        for c in app.registered_commands
        if c.callback
    ]
    + [g.name for g in app.registered_groups if g.name]
)


def _run(target: typer.Typer, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(target, args, prog_name="proofwatch", env={"COLUMNS": "100"})
    return result.exit_code, result.output


def test_every_top_level_name_is_known() -> None:
    """The names cover the contract's commands and groups."""
    assert {"status", "invoice", "proof", "scan", "init", "config", "notify"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_named_command_gets_an_app_with_it_alone_and_the_same_help(name: str) -> None:
    """``proofwatch NAME --help`` (and with global options first) prints what the whole app
    prints, from an app that holds only NAME."""
    for args in ([name, "--help"], ["--config", "x.toml", "--debug", name, "--help"]):
        only = _app_for(args)
        assert only is not app
        assert len(only.registered_commands) + len(only.registered_groups) == 1
        assert _run(only, args) == _run(app, args)


@pytest.mark.parametrize(
    "args", [[], ["--help"], ["--help", "status"], ["statu"], ["--bogus", "status"]]
)
def test_no_name_help_first_or_a_typo_gets_the_whole_app(args: list[str]) -> None:
    """Root help, a mistyped command and an unknown option before the command: the whole
    app answers (its help and suggestions list every command)."""
    assert _app_for(args) is app
