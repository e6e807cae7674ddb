"""The smallest config for the real program: one SQLite file and one chain, for the tests that
run ``proofwatch`` (``python -m watcher``) in a subprocess."""

from __future__ import annotations

from pathlib import Path

WALLET = "0xB3e9568A9cbB624403743340358c85CCce130893"


def one_chain_config(tmp_path: Path, rpc_url: str, *, internal: str | None = None) -> Path:
    """``tmp_path/watcher.toml``: a database ``tmp_path/watcher.db`` and chain ``anvil``
    (31337) at ``rpc_url`` watching ``WALLET``; ``internal`` when given."""
    config = tmp_path / "watcher.toml"
    mode = "" if internal is None else f'internal = "{internal}"\n'
    config.write_text(
        f"""[database]
url = "sqlite:///{tmp_path / "watcher.db"}"
[[chains]]
name = "anvil"
chain_id = 31337
rpc_urls = ["{rpc_url}"]
receiving_address = "{WALLET}"
{mode}"""
    )
    return config
