"""``proofwatch status`` without ``--json``: the document as a readable report (Rich)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from watcher.cli.common import console
from watcher.runtime.status_doc import parse_ts


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


def print_status(document: dict[str, Any], problems: list[str]) -> None:
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
