"""``proof INV`` (the frozen bundle, JSON or a printable receipt) and ``proof verify``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from watcher.cli.common import load, print_json, read
from watcher.errors import BadInput

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
_INVOICE_REF = re.compile(r"^INV-[0-9]+$", re.IGNORECASE)


class _ShowByDefault(typer.core.TyperGroup):
    """``proof INV ...`` is ``proof show INV ...``: the command predates ``proof verify``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


proof_app = typer.Typer(
    cls=_ShowByDefault,
    help="Proofs of paid invoices: `proof INV` prints one, `proof verify` re-checks one on chain.",
    no_args_is_help=True,
)


@proof_app.command("show")
def proof_show(
    invoice: Annotated[str, typer.Argument(help="Invoice id, e.g. INV-1.")],
    fmt: Annotated[str, typer.Option("--format", help="json | html.")] = "json",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to FILE.")] = None,
) -> None:
    """The proof bundle of a paid invoice (`proof INV` for short)."""
    if fmt not in ("json", "html"):
        raise BadInput(f"--format {fmt!r} must be json or html")
    from watcher.ledger.proof import load_proof

    bundle = read(lambda source: load_proof(source, invoice))
    if fmt == "json":
        text = json.dumps(bundle, indent=2) + "\n"
    else:
        from watcher.templates.render import render_proof  # Jinja2: only for HTML

        text = render_proof(bundle)
    write_out(text, output)


def write_out(text: str, output: Path | None) -> None:
    """``text`` on stdout, or into ``output`` with one confirmation line."""
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8", newline="")
        typer.echo(f"wrote {output}")


@proof_app.command("verify")
def proof_verify(
    source: Annotated[str, typer.Argument(help="A proof JSON file, or an invoice id (INV-1).")],
    rpc: Annotated[
        str | None,
        typer.Option("--rpc", help="Node to ask (default: the config's URLs for that chain)."),
    ] = None,
    finality: Annotated[
        str | None,
        typer.Option("--finality", help="finalized | safe | N confirmations (default: config)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-check a proof on chain: 0 verified, 3 first mismatch, 1 node unreachable.

    A proof file needs no database; the node is --rpc or the config's chain of that chain id.
    """
    from watcher.chain.rpc import RpcPool  # the chain adapter: only this command needs it
    from watcher.chain.verify import ProofMismatch, parse_finality, verify_bundle

    wanted = parse_finality(finality) if finality is not None else None
    bundle = _read_bundle(source)
    chain_id = _chain_id(bundle)
    if rpc is not None:
        if not rpc.startswith(("http://", "https://")):
            raise BadInput(f"--rpc {rpc!r} must be an http:// or https:// URL")
        urls: list[str] = [rpc]
        policy = wanted or "finalized"
        name = f"chain {chain_id}"
    else:
        settings = load()
        chain = next((c for c in settings.chains if c.chain_id == chain_id), None)
        if chain is None:
            raise BadInput(f"no chain with chain id {chain_id!r} in the config: pass --rpc URL")
        urls, name = list(chain.rpc_urls), chain.name
        policy = wanted or str(chain.finality)
    pool = RpcPool(urls, chain=name, timeout=10.0, max_attempts=2)
    try:
        result = verify_bundle(bundle, pool, finality=policy)
    except ProofMismatch as exc:
        if as_json:
            print_json(exc.verification.as_json())
        raise
    finally:
        pool.close()
    if as_json:
        print_json(result.as_json())
        return
    typer.echo(
        f"verified {result.invoice} on chain {result.chain_id} via {result.rpc} "
        f"(final block {result.final_block}, {result.finality}):"
    )
    for check in result.checks:
        typer.echo(f"  ok  {check.field}: {check.detail}")


def _read_bundle(source: str) -> Any:
    path = Path(source)
    if _INVOICE_REF.match(source) and not path.exists():
        from watcher.ledger.proof import load_proof

        return read(lambda db: load_proof(db, source))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read proof file {source!r}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInput(f"proof file {source!r} is not JSON: {exc}") from exc


def _chain_id(bundle: Any) -> int:
    chain = bundle.get("chain") if isinstance(bundle, dict) else None
    value = chain.get("chain_id") if isinstance(chain, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"the bundle does not match proof-v1 at chain.chain_id: {value!r}")
    return value
