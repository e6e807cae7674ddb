"""The proof bundle of a paid invoice: frozen JSON, and a printable HTML receipt."""

from __future__ import annotations

import html
import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from watcher.errors import NotFound, Refused
from watcher.ids import fmt_id, parse_id
from watcher.store.tables import Invoice, Proof


def load_proof(engine: Engine, ref: str) -> dict[str, Any]:
    """The frozen bundle of ``ref``; refused while the invoice is not settled."""
    with Session(engine) as session:
        invoice = session.get(Invoice, parse_id(ref, "INV"))
        if invoice is None:
            raise NotFound(f"unknown invoice {ref!r}")
        proof = session.get(Proof, invoice.id)
        if proof is None:
            raise Refused(
                f"{fmt_id('INV', invoice.id)} is {invoice.status}: a proof exists only once it "
                "is paid by final payments"
            )
        bundle: dict[str, Any] = json.loads(proof.bundle)
        return bundle


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _link(text: Any, url: str | None) -> str:
    return f'<a href="{_e(url)}">{_e(text)}</a>' if url else f"<code>{_e(text)}</code>"


def render_html(bundle: dict[str, Any]) -> str:
    """A clean, printable receipt a consultant can send to a client's accounts team."""
    inv, ret, chain, asset = bundle["invoice"], bundle["retainer"], bundle["chain"], bundle["asset"]
    cycle = bundle.get("cycle")
    approval = ret.get("approval") or {}
    rows = []
    for p in bundle["payments"]:
        rows.append(
            "<tr>"
            f"<td>{_link(p['tx_hash'], p.get('explorer_tx_url'))}"
            f"{'' if p.get('log_index') is None else ' #' + _e(p['log_index'])}</td>"
            f"<td>{_e(p['block_number'])}<br><small><code>{_e(p['block_hash'])}</code></small>"
            f"<br><small>mined {_e(p.get('block_time'))}</small></td>"
            f"<td>{_e(p['final_block'])}</td>"
            f"<td><code>{_e(p['from'])}</code></td>"
            f"<td class=num>{_e(p['amount'])} {_e(p['asset'])}<br>"
            f"<small>{_e(p['amount_base_units'])} base units</small></td>"
            f"<td>{_e(p['finalized_at'])}</td>"
            "</tr>"
        )
    period = (
        f"Month {_e(cycle['period_index'])}: {_e(cycle['starts_at'])} to {_e(cycle['ends_at'])}"
        if cycle
        else "Sprint (no monthly cycle)"
    )
    token = (
        f"<code>{_e(asset['token_address'])}</code> (decimals on chain: "
        f"{_e(asset['decimals_on_chain'])})"
        if asset.get("token_address")
        else f"native {_e(asset['symbol'])} (18 decimals)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Payment proof {_e(inv["id"])}</title>
<style>
body {{ font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1b1f24;
       max-width: 60rem; margin: 2rem auto; padding: 0 1.5rem; }}
h1 {{ font-size: 1.5rem; margin-bottom: .2rem; }} .sub {{ color: #57606a; margin-top: 0; }}
.paid {{ display: inline-block; padding: .15rem .6rem; border: 2px solid #1a7f37; color: #1a7f37;
        border-radius: 4px; font-weight: 600; text-transform: uppercase; letter-spacing: .05em; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; }}
th, td {{ text-align: left; vertical-align: top; padding: .45rem .6rem;
         border-bottom: 1px solid #d0d7de; }}
th {{ background: #f6f8fa; font-weight: 600; }} td.num {{ text-align: right; white-space: nowrap; }}
dl {{ display: grid; grid-template-columns: 13rem 1fr; gap: .3rem 1rem; }}
dt {{ color: #57606a; }} dd {{ margin: 0; word-break: break-all; }}
code {{ font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }}
footer {{ margin-top: 2rem; color: #57606a; font-size: 12px; }}
@media print {{ body {{ margin: 0; }} a {{ color: inherit; text-decoration: none; }} }}
</style></head>
<body>
<h1>Payment proof for {_e(inv["id"])}</h1>
<p class="sub">{_e(ret["client"])} &middot; {period}</p>
<p><span class="paid">{_e(inv["status"].replace("_", " "))}</span></p>
<dl>
<dt>Amount owed</dt><dd>{_e(inv["price"])} {_e(asset["symbol"])}</dd>
<dt>Amount invoiced</dt><dd>{_e(inv["amount"])} {_e(asset["symbol"])}
 ({_e(inv["amount_base_units"])} base units)</dd>
<dt>Amount received</dt><dd>{_e(inv["paid_amount"])} {_e(asset["symbol"])}</dd>
<dt>Overpaid by</dt><dd>{_e(inv["overpaid_by"])} {_e(asset["symbol"])}</dd>
<dt>Issued / due / paid</dt><dd>{_e(inv["issued_at"])} / {_e(inv["due_at"])} /
 {_e(inv["paid_at"])}</dd>
<dt>Chain</dt><dd>{_e(chain["name"])} (chain id {_e(chain["chain_id"])})</dd>
<dt>Asset</dt><dd>{_e(asset["symbol"])}: {token}</dd>
<dt>Paid to</dt><dd><code>{_e(inv["pay_to"])}</code></dd>
<dt>Retainer</dt><dd>{_e(ret["id"])}: {_e(ret.get("scope") or "")}</dd>
<dt>Terms hash</dt><dd><code>{_e(ret["terms_hash"])}</code></dd>
<dt>Terms approved by</dt><dd>{_e(approval.get("approved_by"))} at {_e(approval.get("approved_at"))}
 {(" &middot; " + _e(approval["note"])) if approval.get("note") else ""}</dd>
</dl>
<h2>On-chain payments</h2>
<table>
<tr><th>Transaction</th><th>Block</th><th>Final block</th><th>From</th><th>Amount</th>
<th>Final at</th></tr>
{"".join(rows)}
</table>
<footer>Each payment was read from the chain by a watch-only service and counted only once its
block was final: read from an already final block, or re-checked by transaction hash when its
block became final (same block hash, status 1, transfer still present). Then it was frozen here.
Anyone can verify it on any node or explorer of chain {_e(chain["chain_id"])}.</footer>
</body></html>
"""
