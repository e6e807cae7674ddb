"""The versioned JSON Schema of the proof bundle (``proof-v1``), shipped inside the package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from watcher.errors import BadInput

SCHEMA_VERSION = "proof-v1"


@cache
def proof_schema() -> dict[str, Any]:
    """The ``proof-v1`` JSON Schema document (``watcher/schemas/proof-v1.json``)."""
    text = resources.files("watcher").joinpath(f"schemas/{SCHEMA_VERSION}.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the bundle)"


def validate_bundle(bundle: Any) -> None:
    """Raise ``BadInput`` naming the first field where ``bundle`` breaks ``proof-v1``."""
    from jsonschema import Draft202012Validator  # only when a bundle is checked

    validator = Draft202012Validator(proof_schema())
    errors = sorted(validator.iter_errors(bundle), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        raise BadInput(
            f"the bundle does not match {SCHEMA_VERSION} at {_path(first.absolute_path)}: "
            f"{first.message}"
        )
