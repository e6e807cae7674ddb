"""The secrets side of loading a config: ``.env`` and ``${VAR}``, and no keys, ever.

Proofwatch is watch-only: a private key or a BIP-39 mnemonic anywhere (the TOML, ``.env``, a
``WATCHER_*`` variable, a value a ``${VAR}`` brings in) is refused, and no message quotes it.
Every interpolated value is kept, so logs and errors can redact it.
"""

from __future__ import annotations

import os
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEX64 = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")
_PARTS = re.compile(r"[\s,;=:/?&]+")
# ``openssl rand -hex 32``: accepted as a webhook ``secret`` only (elsewhere it is a key).
_HEX_SECRET = re.compile(r"[0-9a-fA-F]{64}")
_SECRET_KEY = re.compile(r"notify\.webhooks\[\d+\]\.secret")


@cache
def _bip39_words() -> frozenset[str]:
    text = resources.files("eth_account.hdaccount").joinpath("wordlist/english.txt").read_text()
    return frozenset(text.split())


def looks_like_secret_key(value: str) -> str | None:
    """Why ``value`` looks like a private key or a mnemonic, or None."""
    stripped = value.strip()
    if _HEX64.fullmatch(stripped) or any(
        _HEX64.fullmatch(part) for part in _PARTS.split(stripped) if part
    ):
        return "looks like a private key (64 hex characters); proofwatch is watch-only"
    words = stripped.lower().split()
    if len(words) in (12, 15, 18, 21, 24) and all(w in _bip39_words() for w in words):
        return "looks like a BIP-39 mnemonic; proofwatch is watch-only"
    return None


class Problems:
    """Every problem of one config, in the order found; keys found in it never echoed."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._hidden: set[str] = set()

    def add(self, key: str, why: str) -> None:
        self.items.append(f"{key}: {why}")

    def hide(self, value: str) -> None:
        """Never echo ``value`` (a key or mnemonic found in the config) in any message."""
        stripped = value.strip()
        parts = [stripped, repr(stripped)[1:-1]]
        parts += [part for part in _PARTS.split(stripped) if _HEX64.fullmatch(part)]
        self._hidden.update(part for part in parts if part)

    def messages(self) -> list[str]:
        out = []
        for item in self.items:
            for secret in sorted(self._hidden, key=len, reverse=True):
                item = item.replace(secret, "<redacted>")
            out.append(item)
        return out


class Environment:
    """``.env`` under the process environment, checked for keys before anything uses it."""

    def __init__(self, env_path: Path, problems: Problems) -> None:
        self._problems = problems
        file_env: dict[str, str] = {}
        # A bare 64-hex value may be a webhook secret (openssl rand -hex 32): it is refused
        # only if something other than a webhook ``secret`` uses it, or nothing does.
        self._hex: dict[str, str] = {}  # variable -> where it is defined, for the message
        self._used_as_secret: set[str] = set()
        self.secrets: list[str] = []  # every value a ${VAR} brought in, for redaction
        if env_path.is_file():
            file_env = {k: v for k, v in dotenv_values(env_path).items() if v is not None}
            for key, value in file_env.items():
                self._check(f"{env_path.name}:{key}", key, value)
        for key, value in os.environ.items():
            if key.startswith(("WATCHER_", "PROOFWATCH_")):
                self._check(f"environment:{key}", key, value)
        self._values = {**file_env, **os.environ}

    def _check(self, where: str, name: str, value: str) -> None:
        if (why := looks_like_secret_key(value)) is None:
            return
        if _HEX_SECRET.fullmatch(value.strip()):
            self._hex[name] = where
        else:
            self._problems.add(where, why)
            self._problems.hide(value)

    def interpolate(self, value: Any, key: str = "") -> Any:
        """``value`` with every ``${VAR}`` replaced, refusing keys in it or brought in."""
        if isinstance(value, dict):
            return {k: self.interpolate(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        secret_key = bool(_SECRET_KEY.fullmatch(key))
        whole = _VAR.fullmatch(value.strip()) is not None
        why = looks_like_secret_key(value)
        if why and not (secret_key and _HEX_SECRET.fullmatch(value.strip())):
            self._problems.add(key, why)
            self._problems.hide(value)

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            found = self._values.get(name, "")
            if found == "":
                self._problems.add(key, f"${{{name}}} is not set in the environment or .env")
                return ""
            if secret_key and whole and _HEX_SECRET.fullmatch(found.strip()):
                self._used_as_secret.add(name)
            elif reason := looks_like_secret_key(found):
                self._problems.add(key, f"${{{name}}} {reason}")
                self._problems.hide(found)
            self.secrets.append(found)
            return found

        return _VAR.sub(sub, value)

    def check_unused(self) -> None:
        """Refuse each 64-hex variable that no webhook ``secret`` took as a whole."""
        for name, where in self._hex.items():
            if name not in self._used_as_secret:  # used elsewhere (reported there), or unused
                value = self._values.get(name, "")
                self._problems.add(where, looks_like_secret_key(value) or "private key")
                self._problems.hide(value)


def status_token_from_env(raw: dict[str, Any], problems: Problems) -> None:
    """``[status] token`` must be a ``${VAR}``: a token written into the TOML is refused
    (and dropped, so it is reported once) without showing it."""
    status = raw.get("status")
    if isinstance(status, dict) and isinstance(status.get("token"), str):
        token = str(status["token"])
        if not _VAR.fullmatch(token.strip()):
            problems.add(
                "status.token",
                'must come from the environment, like "${STATUS_TOKEN}" (value not shown)',
            )
            problems.hide(token)
            status.pop("token")
