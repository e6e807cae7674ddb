"""The status listener's Host check and token comparison, as pure functions."""

from __future__ import annotations

import base64

import pytest

from watcher.runtime.http_guard import HostCheck, host_name, token_matches

TOKEN = "status-token-0123456789"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9464", "127.0.0.1"),
        ("Status.Example.COM", "status.example.com"),
        ("status.example.com.:443", "status.example.com"),
        ("[::1]:9464", "::1"),
        ("[::1]", "::1"),
        ("", None),
        (None, None),
        ("host:port", None),
        ("::1", None),  # an IPv6 literal needs brackets
        ("[::1]x", None),
        (":9464", None),
    ],
)
def test_host_name_strips_the_port_and_refuses_malformed_headers(
    header: str | None, name: str | None
) -> None:
    """A Host header gives its lowercased host without port, or None when malformed."""
    assert host_name(header) == name


def test_loopback_listen_accepts_loopback_names_and_allowed_hosts_only() -> None:
    """Listening on 127.0.0.1 answers localhost, 127.0.0.1, [::1] and allowed hosts, not others."""
    check = HostCheck("127.0.0.1", ["status.example.com"])
    for ok in (
        "127.0.0.1:9464",
        "localhost",
        "[::1]:1",
        "status.example.com",
        "STATUS.example.com",
    ):
        assert check.allows(ok), ok
    for bad in ("evil.example", "127.0.0.1.evil.example", "10.0.0.5", "example.com", None):
        assert not check.allows(bad), bad


def test_wildcard_listen_accepts_any_ip_but_no_unlisted_name() -> None:
    """On 0.0.0.0 or :: any IP literal is answered (rebinding needs a name), names must be
    listed."""
    for listen in ("0.0.0.0", "::"):
        check = HostCheck(listen, ["status.example.com"])
        assert check.allows("10.0.0.5:9464") and check.allows("[fd00::1]:9464")
        assert check.allows("status.example.com")
        assert not check.allows("attacker.example")
        assert not check.allows("localhost")


def test_named_listen_host_is_accepted() -> None:
    """Listening on a host name answers that name (any case, any port) and nothing else."""
    check = HostCheck("status.internal")
    assert check.allows("Status.Internal:8080")
    assert not check.allows("127.0.0.1")


def test_token_matches_bearer_or_basic_password_only() -> None:
    """Bearer <token> and Basic <user>:<token> carry the token; anything else does not."""
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert token_matches(TOKEN, f"Bearer {TOKEN}")
    assert token_matches(TOKEN, f"bearer  {TOKEN} ")
    assert token_matches(TOKEN, f"Basic {basic}")
    wrong_basic = base64.b64encode(f"{TOKEN}:".encode()).decode()  # token as the user name
    for bad in (
        None,
        "",
        TOKEN,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Token {TOKEN}",
        f"Basic {wrong_basic}",
        "Basic !!!",
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ):
        assert not token_matches(TOKEN, bad), bad
