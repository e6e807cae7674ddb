"""Where the start-up of one ``proofwatch scan`` goes: run as ``python bench/boot_probe.py
OUT.json ARGS...`` with the working directory at a checkout, it imports that checkout's
``watcher`` and runs ``watcher.cli.app.main(ARGS)`` in this process, timing each phase with
``time.perf_counter`` (no profiler: its overhead would be the figure). ``bench/boot.py``
runs it and prints the table; nothing here changes what the program does.

Phases, in the order they run: the required stack's imports (the libraries the project is
built on, as a plain ``import`` costs them), proofwatch's own modules (what the CLI and the
scan command import beyond that stack), then inside the command: settings (load and
validation), engine (existence check and ``create_engine``), schema check, lock (acquire and
release), logging set-up, RPC pool set-up, token decimals check, the scan itself (of which:
the first head request), the JSON output; "typer" is what the command line parsing costs
around the command; "exit" is from ``main`` raising ``SystemExit`` to the last ``atexit``
hook, or to ``os._exit`` where the checkout ends its process itself (the ``atexit`` hooks, the
engines disposed). The wall time outside all this (interpreter start-up,
the parent's ``fork``/``exec``, finalisation) is what ``bench/boot.py`` measures around it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

STARTED = time.time()  # the parent subtracts its own clock before the spawn
_t0 = time.perf_counter()
spent: dict[str, float] = {}
STACK = ("sqlmodel", "structlog", "typer", "requests", "pydantic", "tomllib", "dotenv")
OWN = ("watcher.cli.app", "watcher.logs", "watcher.runtime.service", "watcher.runtime.locks")


def _add(phase: str, seconds: float) -> None:
    spent[phase] = spent.get(phase, 0.0) + seconds


def _import(names: tuple[str, ...], phase: str) -> None:
    started = time.perf_counter()
    for name in names:
        __import__(name)
    _add(phase, time.perf_counter() - started)


def _timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(phase, time.perf_counter() - started)

    return wrapper


def _timed_cm(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        cm = fn(*args, **kwargs)
        value = cm.__enter__()
        _add(phase, time.perf_counter() - started)
        try:
            yield value
        except BaseException:
            started = time.perf_counter()
            if not cm.__exit__(*sys.exc_info()):
                _add(phase, time.perf_counter() - started)
                raise
            _add(phase, time.perf_counter() - started)
        else:
            started = time.perf_counter()
            cm.__exit__(None, None, None)
            _add(phase, time.perf_counter() - started)

    return wrapper


def _patch(module: str, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``module.name`` by ``make(it)`` there and wherever a loaded module holds it."""
    original = getattr(sys.modules[module], name)
    replacement = make(original)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("watcher") and vars(mod).get(name) is original:
            setattr(mod, name, replacement)


def _patch_method(module: str, cls: str, name: str, phase: str) -> None:
    klass = getattr(sys.modules[module], cls)
    setattr(klass, name, _timed(phase, getattr(klass, name)))


def _instrument() -> None:
    __import__("watcher.chain.scanner")
    __import__("watcher.chain.online")
    __import__("watcher.cli.common")
    __import__("watcher.store.db")
    __import__("watcher.settings")
    plain = {
        ("watcher.settings", "load_settings"): "settings",
        ("watcher.store.db", "database_exists"): "engine",
        ("watcher.store.db", "make_engine"): "engine",
        ("watcher.store.db", "require_schema"): "schema check",
        ("watcher.logs", "configure"): "logging set-up",
        ("watcher.chain.online", "make_pool"): "RPC pool set-up",
        ("watcher.cli.common", "print_json"): "JSON output",
    }
    for (module, name), phase in plain.items():
        _patch(module, name, lambda fn, phase=phase: _timed(phase, fn))
    if hasattr(sys.modules["watcher.store.db"], "dispose_engines"):
        _patch("watcher.store.db", "dispose_engines", lambda fn: _timed("engine disposal", fn))
    _patch("watcher.runtime.locks", "command_lock", lambda fn: _timed_cm("lock", fn))
    _patch_method("watcher.runtime.service", "Watcher", "check_decimals", "token decimals")
    _patch_method("watcher.runtime.service", "Watcher", "scan", "scan (with decimals)")
    _patch_method("watcher.chain.scanner", "_ChainScan", "_head", "first head request")
    _patch_method("watcher.chain.scanner", "_ChainScan", "run", "poll")


def _write(out: str, exit_started: list[float]) -> None:
    """The figures so far, to ``out`` (again at each call: the last one is complete)."""
    spent["main"] = exit_started[0] - exit_started[1]
    spent["exit"] = time.perf_counter() - exit_started[0]
    spent["probe"] = time.perf_counter() - _t0
    with open(out, "w") as fh:
        json.dump({"started": STARTED, "ended": time.time(), "spent": spent}, fh)


def _os_exit_writing(out: str, exit_started: list[float]) -> Callable[[int], NoReturn]:
    real = os._exit

    def _exit(code: int) -> NoReturn:  # a checkout that ends the process itself: after atexit
        _write(out, exit_started)
        real(code)

    return _exit


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    exit_started = [0.0]
    atexit.register(_write, out, exit_started)  # registered first: runs last
    os._exit = _os_exit_writing(out, exit_started)
    sys.path.insert(0, "")  # the checkout in the working directory, as ``-m watcher`` has it
    _import(STACK, "required stack imports")
    _import(OWN, "own module imports")
    _instrument()
    app = sys.modules["watcher.cli.app"]
    run = getattr(app, "_run", None)  # a checkout whose ``main`` ends the process itself

    if run is not None:

        def ran(args: list[str]) -> int:
            try:
                return int(run(args))
            finally:
                exit_started[0] = time.perf_counter()

        app._run = ran
    sys.argv = ["proofwatch", *args]
    exit_started.append(time.perf_counter())
    try:
        app.main()  # as ``python -m watcher`` calls it: the process's own command line
    finally:
        exit_started[0] = exit_started[0] or time.perf_counter()


if __name__ == "__main__":
    main()
