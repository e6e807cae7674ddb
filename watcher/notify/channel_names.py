"""A notification channel's name when the config gives none: stable, and free of secrets."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit


def default_channel_name(kind: str, url: str) -> str:
    """A channel's name when the config gives none: stable while its URL is, never holding a
    secret. ``webhook:<host>-<8 hex>`` or ``apprise:<scheme>-<8 hex>`` (an Apprise URL's host
    may be a token), the hex a SHA-256 of the URL without its password. Rotating a password or
    a webhook ``secret`` keeps the name; changing the URL makes it another channel."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        parts, host = urlsplit(""), ""
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = (userinfo.partition(":")[0] + at if at else "") + hostport  # no password
    bare = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    digest = hashlib.sha256(bare.encode()).hexdigest()[:8]
    label = host if kind == "webhook" and host else (parts.scheme.lower() or "url")
    label = re.sub(r"[^a-z0-9.-]+", "-", label.lower()).strip("-.")[:40] or "url"
    return f"{kind}:{label}-{digest}"
