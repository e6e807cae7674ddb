"""``proofwatch scan`` of two checkouts on one kept chain, interleaved run by run (both see the
same load): whole process, start-up (a second scan with nothing to read) and their difference,
the catch-up work; medians of ``--runs``. Straight to the node (no counting proxy).

```sh
git worktree add --detach /tmp/pw-before 97561e5     # the code before
.venv/bin/python bench/scan.py --cost-only --keep-chain /tmp/chain5k   # builds and keeps it
.venv/bin/python bench/scan_compare.py /tmp/chain5k --before /tmp/pw-before --runs 7
```

Each run: a fresh SQLite database (``proofwatch init``), ``proofwatch scan --json`` timed, then
the same again on that database (start-up). Both checkouts are compiled to bytecode first (as
installed copies are) and run by this interpreter; the payments each found are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.chain import WALLET  # noqa: E402
from bench.contenders import CONFIG, TOKEN, child_env  # noqa: E402
from bench.kept_chain import RECORD  # noqa: E402


def run(checkout: Path, config: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--config", str(config)],
        cwd=checkout, env=child_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: proofwatch {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", type=Path, help="a --keep-chain DIR of bench/scan.py")
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--internal", default="trace_filter")
    args = parser.parse_args(argv)
    record = pickle.loads((args.kept / RECORD).read_bytes())
    text = CONFIG.format(url=record.url, wallet=WALLET, internal=args.internal)
    for symbol, (address, decimals) in record.built.tokens.items():
        text += TOKEN.format(symbol=symbol, address=address, decimals=decimals)
    text = text.replace('"sqlite:///watcher.db"', '"sqlite:///{db}"')
    checkouts = {"before": args.before.resolve(), "after": REPO}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for checkout in checkouts.values():
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "watcher"],
            cwd=checkout, env=env, capture_output=True, check=True,
        )  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {k: {"whole": [], "start": []} for k in checkouts}
    print(
        f"{record.built.head + 1:,} blocks at {record.url}, internal = {args.internal!r}, "
        f"{args.runs} runs each, load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="pw-compare-") as tmp:
        for i in range(args.runs):
            for name, checkout in checkouts.items():
                root = Path(tmp) / name
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir()
                config = root / "watcher.toml"
                config.write_text(text.replace("{db}", str(root / "watcher.db")))
                run(checkout, config, "init")
                whole, out = run(checkout, config, "scan", "--chain", "anvil", "--json")
                start, _ = run(checkout, config, "scan", "--chain", "anvil", "--json")
                found = json.loads(out)["anvil"]["found"]
                times[name]["whole"].append(whole)
                times[name]["start"].append(start)
                print(f"  run {i + 1} {name:6}: whole {whole:.2f} s, start-up {start:.2f} s, "
                      f"found {found}")  # fmt: skip
    print(f"  load at the end {os.getloadavg()[0]:.1f}")
    for label, pick in (("median", statistics.median), ("fastest", min)):
        for name, t in times.items():
            whole, start = pick(t["whole"]), pick(t["start"])
            print(f"  {label:7} {name:6} ({checkouts[name]}): whole {whole:.2f} s, start-up "
                  f"{start:.2f} s, catch-up work {whole - start:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
