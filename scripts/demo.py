"""`make demo`: the main job end to end on the embedded default (a local Anvil node + SQLite).

Starts Anvil (1 s blocks, fast finality), deploys a 6-decimal demo USDC, writes a demo config
in a temporary folder, starts the daemon, creates and approves a retainer, issues the
first-month invoice, pays it from a dev account, waits for finality, and shows the month
funded: the cycle, the proof and the signed webhook a local receiver got. Leaves nothing running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.anvil import AnvilNode  # noqa: E402
from tests.support.contracts import deploy, erc20_transfer  # noqa: E402
from tests.support.receivers import WebhookReceiver  # noqa: E402

SECRET = "demo-webhook-secret-0123456789"
DEADLINE_S = 50


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="proofwatch-demo-"))
    anvil = AnvilNode(slots_in_an_epoch=1, block_time=1).start()
    receiver = WebhookReceiver(secret=SECRET).start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        w3 = anvil.web3()
        accounts = anvil.accounts()
        consultant, client = accounts[9], accounts[1]
        say(f"Anvil on {anvil.url}, chain id {anvil.chain_id}; deploying demo USDC (6 decimals)")
        usdc = deploy(w3, "TestToken", "USD Coin", "USDC", 6)
        usdc.functions.mint(client, 10_000 * 10**6).transact({"from": accounts[0]})
        start_block = anvil.block_number()

        config = workdir / "watcher.toml"
        (workdir / ".env").write_text(
            f"DEMO_RPC_URL={anvil.url}\nWEBHOOK_URL={receiver.url()}\nWEBHOOK_SECRET={SECRET}\n"
        )
        config.write_text(
            f"""[database]
url = "sqlite:///watcher.db"

[[chains]]
name = "local"
chain_id = {anvil.chain_id}
rpc_urls = ["${{DEMO_RPC_URL}}"]
receiving_address = "{consultant}"
finality = "finalized"
poll_seconds = 1
start_block = {start_block}
internal = "trace_filter"

[[chains.tokens]]
symbol = "USDC"
address = "{usdc.address}"
decimals = 6

[billing]
due_days = 7

[[notify.webhooks]]
url = "${{WEBHOOK_URL}}"
secret = "${{WEBHOOK_SECRET}}"
"""
        )
        env = {**os.environ, "WATCHER_CONFIG": str(config)}

        def pw(*args: str, show: bool = True) -> str:
            cmd = [sys.executable, "-m", "watcher", *args]
            if show:
                print(f"$ proofwatch {' '.join(args)}", flush=True)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                raise SystemExit(f"proofwatch {args[0]} failed with exit {out.returncode}")
            if show and out.stdout.strip():
                print(out.stdout.rstrip(), flush=True)
            return out.stdout

        say("Configure and start the daemon")
        pw("config", "check", "--online")
        pw("init")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "daemon.log", "wb"),  # noqa: SIM115
        )

        say("The client approves a monthly retainer and gets the first-month invoice")
        rid = pw(
            "retainer",
            "add",
            "--client",
            "Acme GmbH",
            "--chain",
            "local",
            "--asset",
            "USDC",
            "--monthly",
            "1500",
            "--payer",
            client,
            "--scope",
            "Support retainer: 20 h/month",
        ).strip()
        pw("retainer", "approve", rid, "--by", "Jane Doe (Acme CFO)", "--note", "PO-4711")
        pw("invoice", "issue", rid)
        invoice = json.loads(pw("invoice", "show", "INV-1", "--json", show=False))
        pw(
            "invoice",
            "show",
            "INV-1",
            "--format",
            "html",
            "-o",
            str(workdir / "invoice-INV-1.html"),
        )

        say(f"The client pays exactly {invoice['amount']} USDC")
        tx = erc20_transfer(w3, usdc, client, consultant, int(invoice["amount_base_units"]))
        print(f"tx {tx}", flush=True)

        say("Waiting for the payment to be seen, then final (Anvil finalizes 2 blocks back)")
        last = ""
        while time.monotonic() - started < DEADLINE_S:
            status = json.loads(pw("invoice", "show", "INV-1", "--json", show=False))["status"]
            if status != last:
                print(f"INV-1 is {status}", flush=True)
                last = status
            if status in ("paid", "paid_late") and any(
                r.json()["type"] == "cycle.opened" for r in receiver.accepted()
            ):
                break
            time.sleep(0.5)
        else:
            raise SystemExit("the month was not funded in time: see daemon.log in " + str(workdir))

        say("The month is funded")
        pw("cycles")
        pw("invoice", "show", "INV-1")
        proof: dict[str, Any] = json.loads(pw("proof", "INV-1", show=False))
        payment = proof["payments"][0]
        print(
            f"proof: tx {payment['tx_hash']} block {payment['block_number']} "
            f"(final at block {payment['final_block']}), {payment['amount_base_units']} base "
            f"units, terms {proof['retainer']['terms_hash'][:23]}...",
            flush=True,
        )
        pw("proof", "INV-1", "--format", "html", "-o", str(workdir / "proof-INV-1.html"))
        pw("proof", "INV-1", "-o", str(workdir / "proof-INV-1.json"), show=False)
        say("Anyone re-checks the proof file against a node, without the database")
        pw("proof", "verify", str(workdir / "proof-INV-1.json"), "--rpc", str(anvil.url))

        say("The consultant's webhook received (signature verified)")
        for r in receiver.accepted():
            body = r.json()
            print(f"{body['id']} {body['type']} valid_signature={r.valid_signature}", flush=True)
            if body["type"] == "cycle.opened":
                print(json.dumps(body["data"], indent=2), flush=True)
        print(f"\ndemo finished in {time.monotonic() - started:.1f} s; files in {workdir}")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        receiver.stop()
        anvil.stop()


if __name__ == "__main__":
    sys.exit(main())
