"""Hide the secrets that RPC URLs carry (API keys in the path, query or userinfo).

Every RPC URL that reaches a log line, an exception message or the status output goes through
``redact_url`` first; free text that may quote a URL (``requests``' exception messages do, in
whole or as ``url: /v2/KEY``) goes through ``redact_text``. A database URL keeps what names
the database (driver, user, host, port, database) and loses its password:
``redact_database_url``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MARKER = "<redacted>"

# Parts of a URL shorter than this are not hunted for on their own in free text ("v2", "rpc"
# would blank out unrelated words); they are still removed as part of a longer piece.
MIN_SECRET_PART = 8

# Characters that ``requests`` leaves unquoted when it re-quotes a URL.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"

# A URL in free text: scheme://, then anything up to whitespace, a quote or an angle bracket.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_TRAILING_PUNCTUATION = ".,;:!?)]}"


def redact_url(url: str) -> str:
    """``url`` with scheme and host[:port] kept, and any userinfo, path, query or fragment
    replaced by ``<redacted>``.

    ``https://base-mainnet.g.alchemy.com/v2/AbC123`` becomes
    ``https://base-mainnet.g.alchemy.com/<redacted>``; ``http://127.0.0.1:8545`` (nothing to
    hide) is returned unchanged. A string that does not parse as ``scheme://host`` is replaced
    by the marker as a whole.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return MARKER
    if not parts.scheme or not parts.netloc:
        return MARKER
    _, at, hostport = parts.netloc.rpartition("@")
    if not hostport:
        return MARKER
    has_secret = bool(at) or parts.path not in ("", "/") or bool(parts.query or parts.fragment)
    if not has_secret:
        return f"{parts.scheme}://{hostport}{parts.path}"
    return f"{parts.scheme}://{hostport}/{MARKER}"


def _secret_parts(url: str) -> list[str]:
    """The pieces of ``url`` that may carry a secret, as they could appear on their own in text.

    Pieces shorter than ``MIN_SECRET_PART`` are left out: they hold no real key, and hunting
    them would blank out unrelated words.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return [url]
    userinfo, _, _ = parts.netloc.rpartition("@")
    path = parts.path if parts.path not in ("", "/") else ""
    tail = path + ("?" + parts.query if parts.query else "")
    pieces = [tail, path, parts.query, parts.fragment, userinfo]
    pieces += userinfo.split(":") + path.split("/")
    for pair in parts.query.split("&"):
        pieces += pair.split("=")
    out: list[str] = []
    for piece in pieces:
        for variant in (piece, unquote(piece), quote(unquote(piece), safe=_URL_SAFE)):
            if len(variant) >= MIN_SECRET_PART and variant not in out:
                out.append(variant)
    return out


def _redact_url_match(match: re.Match[str]) -> str:
    found = match.group(0)
    stripped = found.rstrip(_TRAILING_PUNCTUATION)
    return redact_url(stripped) + found[len(stripped) :]


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every URL in it redacted, and every secret-bearing part of each URL in
    ``secrets`` (path+query, path, query, userinfo, long path segments and query values)
    replaced by ``<redacted>`` wherever it appears on its own.
    """
    urls = sorted({s for s in secrets if s}, key=len, reverse=True)
    for url in urls:
        text = text.replace(url, redact_url(url))
    text = _URL_IN_TEXT.sub(_redact_url_match, text)
    pieces = sorted({p for url in urls for p in _secret_parts(url)}, key=len, reverse=True)
    for piece in pieces:
        if piece != MARKER and piece != "/" + MARKER:
            text = text.replace(piece, MARKER)
    return text


#: Query parameters of a database URL that carry a secret (libpq's names).
_DB_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile"})


def redact_database_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password=`` query parameter) replaced
    by ``<redacted>``: ``postgresql+psycopg://app:s3cret@db:5432/watcher`` becomes
    ``postgresql+psycopg://app:<redacted>@db:5432/watcher``. A SQLite URL has no secret and
    is returned unchanged; a string that does not parse is replaced by the marker as a whole.
    """
    if url.startswith("sqlite:"):
        return url
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return MARKER
    if not parts.scheme or not (parts.netloc or parts.path):
        return MARKER
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    netloc = f"{user}{':' + MARKER if colon else ''}{at}{hostport}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        key, eq, _value = pair.partition("=")
        pairs.append(
            f"{key}={MARKER}" if eq and unquote(key).lower() in _DB_SECRET_PARAMS else pair
        )
    query = "?" + "&".join(pairs) if pairs else ""
    fragment = "#" + parts.fragment if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def database_secrets(url: str) -> list[str]:
    """The secret pieces of a database URL (its password, raw and unquoted), for
    ``redact_text``; none for SQLite."""
    if url.startswith("sqlite:"):
        return []
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return [url]
    userinfo, _, _ = parts.netloc.rpartition("@")
    found = [userinfo.partition(":")[2]]
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in _DB_SECRET_PARAMS]
    out: list[str] = []
    for secret in found:
        for variant in (secret, unquote(secret)):
            if variant and variant not in out:
                out.append(variant)
    return out
