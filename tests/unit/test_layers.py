"""The folders keep their promises about what they import: the chain reader never touches the
database, the domain does no I/O, and notifications do not reach into the chain reader."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WATCHER = Path(__file__).resolve().parents[2] / "watcher"

# folder: the top-level modules (or packages) none of its files may import
FORBIDDEN = {
    "chain": ("sqlalchemy", "sqlmodel", "watcher.store", "watcher.ledger"),
    "domain": (
        "sqlalchemy",
        "sqlmodel",
        "structlog",
        "web3",
        "requests",
        "watcher.store",
        "watcher.chain",
        "watcher.ledger",
    ),
    "notify": ("watcher.chain",),
}


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _hits(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for f in forbidden if n == f or n.startswith(f + "."))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_folder_imports_nothing_it_promises_not_to(folder: str) -> None:
    """No module of chain/, domain/ or notify/ imports what its layer excludes."""
    found = {
        str(path.relative_to(WATCHER)): hits
        for path in sorted((WATCHER / folder).rglob("*.py"))
        if (hits := _hits(imports(path), FORBIDDEN[folder]))
    }
    assert found == {}


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself finds a database import, however it is written."""
    source = tmp_path / "leaky.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import sqlalchemy.engine\n"
        "def f() -> None:\n"
        "    from watcher.store.tables import Transfer\n"
    )
    assert _hits(imports(source), FORBIDDEN["chain"]) == [
        "sqlalchemy.engine",
        "watcher.store.tables",
        "watcher.store.tables.Transfer",
    ]
