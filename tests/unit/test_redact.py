"""Redaction of RPC URLs and of free text that quotes them."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from watcher.redact import (
    MARKER,
    database_secrets,
    redact_database_url,
    redact_text,
    redact_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://base-mainnet.g.alchemy.com/v2/AbC123",
            "https://base-mainnet.g.alchemy.com/<redacted>",
        ),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
        ("https://user:pw@host/x?key=1", "https://host/<redacted>"),
        ("https://user:pw@host", "https://host/<redacted>"),
        ("https://host?apikey=abc", "https://host/<redacted>"),
        ("https://mainnet.infura.io:443/v3/0123abcd", "https://mainnet.infura.io:443/<redacted>"),
        ("http://[::1]:8545/token", "http://[::1]:8545/<redacted>"),
        ("wss://node.example/ws/key", "wss://node.example/<redacted>"),
    ],
)
def test_redact_url_keeps_scheme_and_host_only(url: str, expected: str) -> None:
    """A URL keeps scheme and host[:port]; userinfo, path and query become the marker."""
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", ["", "not a url", "127.0.0.1:8545/v2/KEY", "http://[::1/x"])
def test_redact_url_hides_unparseable_strings_entirely(url: str) -> None:
    """Something that is not scheme://host is replaced by the marker as a whole."""
    assert redact_url(url) == MARKER


def test_redact_text_replaces_full_url_and_path_quoted_by_requests() -> None:
    """The URL and the path+query that requests quotes in its errors are both hidden."""
    url = "http://127.0.0.1:9/v2/SECRETKEY123?apikey=OTHERSECRET9"
    text = (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/v2/SECRETKEY123?apikey=OTHERSECRET9 (Caused by ...) while calling " + url + "."
    )
    out = redact_text(text, [url])
    assert "SECRETKEY123" not in out
    assert "OTHERSECRET9" not in out
    assert "http://127.0.0.1:9/<redacted>." in out
    assert "host='127.0.0.1', port=9" in out


def test_redact_text_hides_a_key_quoted_on_its_own() -> None:
    """A long path segment or query value of a secret URL is hidden wherever it appears."""
    url = "https://eth.example/v2/abcdEFGH1234"
    assert redact_text("invalid api key abcdEFGH1234", [url]) == f"invalid api key {MARKER}"


def test_redact_text_redacts_urls_it_was_not_told_about() -> None:
    """Any scheme://host/path in the text is redacted, keeping trailing punctuation."""
    out = redact_text("redirected to (https://other.example/v1/zzz).", [])
    assert out == f"redirected to (https://other.example/{MARKER})."


def test_redact_text_leaves_plain_text_and_short_words_alone() -> None:
    """Short path parts such as "v2" are not hunted for, so ordinary words survive."""
    text = "eth_getLogs failed on v2 of the api at http://127.0.0.1:8545"
    assert redact_text(text, ["https://h.example/v2/KEYKEYKEYKEY"]) == text


def test_redact_text_is_idempotent() -> None:
    """Redacting twice gives the same text as redacting once."""
    url = "https://user:secretpass@h.example/v2/KEYKEYKEYKEY?x=1"
    once = redact_text(f"error at {url} and {url}", [url])
    assert redact_text(once, [url]) == once


KEY_ALPHABET = string.ascii_letters + string.digits + "-_.~"
keys = st.text(alphabet=KEY_ALPHABET, min_size=8, max_size=48)
hosts = st.sampled_from(["127.0.0.1:8545", "base-mainnet.g.alchemy.com", "rpc.example.org:443"])


def _shapes(key: str) -> list[str]:
    return [
        f"/v2/{key}",
        f"/{key}",
        f"/rpc/{key}/",
        f"/?apikey={key}",
        f"/v1/eth?key={key}&x=1",
        f"?token={key}",
    ]


@given(key=keys, host=hosts, shape=st.integers(min_value=0, max_value=5))
def test_key_in_path_or_query_never_survives_redact_url(key: str, host: str, shape: int) -> None:
    """For any key in the path or query, the redacted URL does not contain it."""
    assume(key not in f"https://{host}/{MARKER}")
    url = f"https://{host}{_shapes(key)[shape]}"
    assert key not in redact_url(url)


@given(
    key=keys,
    host=hosts,
    shape=st.integers(min_value=0, max_value=5),
    prefix=st.text(max_size=20),
    user=st.booleans(),
)
def test_key_never_survives_redact_text(
    key: str, host: str, shape: int, prefix: str, user: bool
) -> None:
    """For any key in the path, query or userinfo, no error text quoting the URL, its path or
    the key alone keeps it after redaction."""
    tail = _shapes(key)[shape]
    url = f"https://{'u:' + key + '@' if user else ''}{host}{tail}"
    assume(key not in prefix and key not in f"https://{host}/{MARKER} url: ")
    text = f"{prefix} {url} url: {tail} (key {key}) {url}."
    assert key not in redact_text(text, [url, "http://127.0.0.1:1"])


# --- database URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://app:s3cret-pw@db.internal:5432/watcher",
            "postgresql+psycopg://app:<redacted>@db.internal:5432/watcher",
        ),
        (
            "postgresql+psycopg://app@db/watcher?sslmode=require&password=s3cret-pw",
            "postgresql+psycopg://app@db/watcher?sslmode=require&password=<redacted>",
        ),
        (
            "postgresql+psycopg:///watcher?host=/run/postgresql",
            "postgresql+psycopg:///watcher?host=/run/postgresql",
        ),
        ("sqlite:////var/lib/proofwatch/watcher.db", "sqlite:////var/lib/proofwatch/watcher.db"),
        ("not a url", "<redacted>"),
    ],
)
def test_a_database_url_keeps_what_names_the_database_and_loses_the_password(
    url: str, shown: str
) -> None:
    """redact_database_url hides the password (userinfo or query) and keeps user, host, db."""
    assert redact_database_url(url) == shown


def test_database_secrets_feed_redact_text() -> None:
    """The password of a database URL, raw or percent-decoded, is blanked in free text."""
    url = "postgresql+psycopg://app:p%40ss-w0rd-1@db/watcher"
    secrets = database_secrets(url)
    text = redact_text("auth failed for p@ss-w0rd-1 and p%40ss-w0rd-1", secrets)
    assert "ss-w0rd" not in text
    assert database_secrets("sqlite:///w.db") == []
