"""The access policy's dashboard cookie: derived from a key, never the key, and only from an
API key."""

from __future__ import annotations

from berth_api.http.access import DASHBOARD_COOKIE, AccessPolicy, is_dashboard_path

POLICY = AccessPolicy(["key-number-one", "key-number-two"], metrics_key="scraper-key")


def cookie(value: str) -> list[bytes]:
    return [f"theme=dark; {DASHBOARD_COOKIE}={value}".encode()]


def test_a_key_gets_a_token_that_is_not_the_key() -> None:
    one = POLICY.dashboard_cookie("key-number-one")
    two = POLICY.dashboard_cookie(" key-number-two ")
    assert one is not None
    assert two is not None
    assert len({one, two, "key-number-one"}) == 3
    assert POLICY.dashboard_cookie("key-number-one") == one  # the same every time
    assert POLICY.cookie_allows(cookie(one))
    assert POLICY.cookie_allows([b"theme=dark", f"{DASHBOARD_COOKIE}={two}".encode()])


def test_nothing_else_gets_a_token() -> None:
    for key in ("", "key-number-on", "scraper-key", "KEY-NUMBER-ONE"):
        assert POLICY.dashboard_cookie(key) is None, key
    assert not POLICY.cookie_allows([])
    assert not POLICY.cookie_allows(cookie("key-number-one"))
    assert not POLICY.cookie_allows(cookie(""))
    token = str(POLICY.dashboard_cookie("key-number-one"))
    assert not POLICY.cookie_allows(cookie(token.upper()))
    other = AccessPolicy(["another-key-0001"])
    assert not other.cookie_allows(cookie(token))


def test_the_dashboard_paths() -> None:
    assert is_dashboard_path("/dashboard")
    assert is_dashboard_path("/dashboard/data")
    assert not is_dashboard_path("/dashboards")
    assert not is_dashboard_path("/v1/dashboard")
