"""Start-up of ``proofwatch scan`` as a whole process, with nothing to read (issue 11).

Run: ``.venv/bin/python bench/boot.py [--runs 10] [--compare DIR]``.

Starts a real Anvil node with the benchmark's two tokens (``bench/chain.py``) and ``--blocks``
empty blocks, writes the config ``bench/contenders.py`` writes for it (``trace_filter``, the
balance guard, two tokens, SQLite), and scans once to the head (the decimals are read and
stored then). Every timed run is then ``python -m watcher scan --chain anvil --json`` with
nothing new: the start-up as a whole. Printed:

- the median wall time of ``--runs`` such scans (with ``--compare DIR``, another checkout,
  e.g. ``git worktree add /tmp/before <commit>``: run by run interleaved with this one, so both
  see the same load; each tree's ``watcher`` is byte-compiled first, see ``bench/startup.py``);
- where the time goes, phase by phase (median of ``--runs`` runs of ``bench/boot_probe.py``,
  which runs the same command in-process with timers around each phase): interpreter
  start-up, the required stack's imports, proofwatch's own modules, settings, engine, schema
  check, lock, logging, RPC pool, token decimals, the poll and its head request, output,
  exit, and the interpreter's teardown after the last ``atexit`` hook;
- the modules the other tree imports that this one does not (``-X importtime``);
- as references: a bare interpreter, and one importing only the required stack, as whole
  processes.

The machine's load average is printed before and after. Nothing is asserted: it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as ``python bench/boot.py``
    sys.path.insert(0, str(REPO))

from bench import startup  # noqa: E402
from bench.chain import WALLET, ChainBuilder  # noqa: E402
from bench.contenders import Proofwatch, child_env  # noqa: E402
from tests.support.anvil import AnvilNode  # noqa: E402

PROBE = REPO / "bench" / "boot_probe.py"
SCAN = ("scan", "--chain", "anvil", "--json")
STACK = "import sqlmodel, structlog, typer, requests, pydantic, tomllib, dotenv"

# (label, how it is derived from the probe's figures); times in seconds.
ROWS: tuple[tuple[str, str], ...] = (
    ("interpreter start-up (spawn to first line)", "interpreter"),
    ("required stack imports", "required stack imports"),
    ("own module imports", "own module imports"),
    ("settings: load + validation", "settings"),
    ("engine: exists check + create_engine", "engine"),
    ("schema check", "schema check"),
    ("logging set-up", "logging set-up"),
    ("lock: acquire + release", "lock"),
    ("RPC pool set-up", "RPC pool set-up"),
    ("token decimals check (DB read)", "token decimals"),
    ("poll: first head request (+ chain id)", "first head request"),
    ("poll: the rest (state, record)", "poll rest"),
    ("Watcher.scan outside decimals and poll", "scan rest"),
    ("JSON output", "JSON output"),
    ("Typer, CLI glue (main minus the above)", "typer"),
    ("exit: atexit hooks, engine disposal", "exit"),
    ("teardown after the last atexit hook", "teardown"),
    ("= the probe's whole process", "wall"),
)
COMMAND_PHASES = (
    "settings",
    "engine",
    "schema check",
    "logging set-up",
    "lock",
    "RPC pool set-up",
    "scan (with decimals)",
    "JSON output",
)


def probe(tree: Path, config: Path, out: Path) -> dict[str, float]:
    """One run of ``bench/boot_probe.py`` in ``tree``: its phases, plus what the parent saw."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, str(PROBE), str(out), "--config", str(config), *SCAN],
        cwd=tree,
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"bench: probe failed in {tree}:\n{done.stderr[-3000:]}")
    record = json.loads(out.read_text())
    spent: dict[str, float] = record["spent"]
    phases = dict(spent)
    phases["interpreter"] = record["started"] - started
    phases["teardown"] = ended - record["ended"]
    phases["wall"] = ended - started
    phases["poll rest"] = spent.get("poll", 0.0) - spent.get("first head request", 0.0)
    phases["scan rest"] = (
        spent.get("scan (with decimals)", 0.0)
        - spent.get("token decimals", 0.0)
        - spent.get("poll", 0.0)
    )
    phases["typer"] = spent["main"] - sum(spent.get(p, 0.0) for p in COMMAND_PHASES)
    phases["exit"] = spent["exit"] + spent.get("engine disposal", 0.0)
    return phases


def modules(tree: Path, config: Path) -> set[str]:
    """The modules one scan imports, from its ``-X importtime`` report."""
    return startup_modules(startup.run(tree, config, SCAN, importtime=True)[1])


def startup_modules(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=100, help="empty blocks on the chain")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another checkout to time")
    args = parser.parse_args(argv)
    trees = {"this": REPO}
    if args.compare:
        trees["compare"] = args.compare.resolve()
    for tree in trees.values():  # as bench/startup.py does: an installed package's bytecode
        env = {k: v for k, v in child_env().items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "watcher"], cwd=tree, env=env, check=True
        )
    print(f"load before: {load()}")
    with tempfile.TemporaryDirectory(prefix="pw-boot-") as tmp, AnvilNode() as node:
        builder = ChainBuilder(node, random.Random(11))
        usdc, dai, *_ = builder._contracts()
        builder.mine(args.blocks)
        pw = Proofwatch(
            Path(tmp) / "pw", node.url or "", WALLET, {"USDC": (usdc, 6), "DAI": (dai, 18)},
            "trace_filter",
        )  # fmt: skip
        pw._run(*SCAN)  # catch up once: the timed scans have nothing to read
        walls: dict[str, list[float]] = {name: [] for name in trees}
        phases: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        out = Path(tmp) / "probe.json"
        for _ in range(args.runs):
            for name, tree in trees.items():
                walls[name].append(startup.run(tree, pw.config, SCAN)[0])
                phases[name].append(probe(tree, pw.config, out))
        imported = {name: modules(tree, pw.config) for name, tree in trees.items()}
        _report(args, trees, walls, phases, imported)
    references = {"python -c pass": "pass", f"python -c {STACK!r}": STACK}
    for label, code in references.items():
        spent = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
            spent.append(time.perf_counter() - started)
        print(f"reference: {label}: median {statistics.median(spent):.3f} s (min {min(spent):.3f})")
    print(f"load after: {load()}")
    return 0


def _report(
    args: argparse.Namespace,
    trees: dict[str, Path],
    walls: dict[str, list[float]],
    phases: dict[str, list[dict[str, float]]],
    imported: dict[str, set[str]],
) -> None:
    print(
        f"\n`python -m watcher scan --chain anvil --json`, nothing to read ({args.blocks} empty "
        f"blocks, trace_filter, balance guard, 2 tokens, SQLite), {args.runs} runs, median:"
    )
    for name, tree in trees.items():
        w = walls[name]
        print(
            f"  {name:8} {statistics.median(w):.3f} s "
            f"(min {min(w):.3f}, max {max(w):.3f})  [{tree}]"
        )
    print(f"\nwhere it goes (bench/boot_probe.py, median of {args.runs} runs each, ms):")
    names = list(trees)
    print(f"  {'phase':44}" + "".join(f"{n:>10}" for n in names))
    for label, key in ROWS:
        cells = []
        for name in names:
            values = [p.get(key, 0.0) for p in phases[name]]
            cells.append(f"{statistics.median(values) * 1000:10.1f}")
        print(f"  {label:44}" + "".join(cells))
    print("  (each row is its own median: the rows need not add up to the last one)")
    if "compare" in imported:
        gone = sorted(imported["compare"] - imported["this"])
        new = sorted(imported["this"] - imported["compare"])
        print(f"\nmodules: this {len(imported['this'])}, compare {len(imported['compare'])}")
        print(f"  imported by compare only: {', '.join(gone) or 'none'}")
        print(f"  imported by this only: {', '.join(new) or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
