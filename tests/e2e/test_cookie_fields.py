"""Cookies in a real Envoy: every field of the `Cookie` header is read (issue #12, defect 4), and a
backend cannot replace tether's cookie (defect 7)."""
import urllib.parse

import harness
from harness import COOKIE, pinned_client, wait_until


def test_a_session_in_the_second_cookie_field_pins_and_the_others_pass(env):
    c, first = pinned_client(env, "backend-2")
    token = f"{COOKIE}={c.jar[COOKIE]}"
    # HTTP/1.1 lets a client send Cookie more than once; Envoy keeps the fields apart.
    r = c.request("/", cookie=["a=1", token], update_jar=False)
    assert r.status == 200 and r.backend == "backend-2", r
    assert r.header("set-cookie") == [], f"a new session for a pinned client: {r}"
    assert r.echoed_headers().get("cookie") == ["a=1"], r.echoed_headers()
    r = c.request("/", cookie=[token, "a=1", "b=2; c=3"], update_jar=False)
    assert r.status == 200 and r.backend == "backend-2", r
    assert r.echoed_headers().get("cookie") == ["a=1; b=2; c=3"], \
        f"the application's cookies were lost: {r.echoed_headers()}"
    r = c.request("/", cookie=["a=1", "b=2"], update_jar=False)
    assert r.echoed_headers().get("cookie") == ["a=1", "b=2"], "untouched without tether's cookie"


def test_after_requests_with_no_cookie_every_field_is_still_read(env):
    """A worker whose requests came with no cookie asks for the first field alone before the
    whole map (one connection: one worker); the request after them, its session in a later
    field, must still pin and keep the application's cookies."""
    c, first = pinned_client(env, "backend-2")
    token = f"{COOKIE}={c.jar[COOKIE]}"
    for fields in (["a=1", token], [token, "a=1", "b=2; c=3"], ["a=1", "b=2", token]):
        for _ in range(3):
            r = c.request("/", cookie=None, update_jar=False)
            assert r.status == 200 and r.set_cookie(COOKIE) is not None, r
        r = c.request("/", cookie=fields, update_jar=False)
        assert r.status == 200 and r.backend == "backend-2", (fields, r)
        assert r.header("set-cookie") == [], f"a new session for a pinned client: {fields} {r}"
        rest = [f for f in fields if f != token]
        assert r.echoed_headers().get("cookie") == ["; ".join(rest)], (fields, r.echoed_headers())
    assert c.connections == 1, "the requests must have reached one worker"


def test_a_backend_cannot_set_tethers_cookie(env):
    c, first = pinned_client(env, "backend-1")
    token = c.jar[COOKIE]
    evil = urllib.parse.quote(f"{COOKIE}=forged; Path=/")
    r = c.request(f"/?set_cookie={evil}&set_cookie=app%3D1")
    assert r.status == 200 and r.backend == "backend-1", r
    assert [sc.raw for sc in r.set_cookies] == ["app=1"], r.header("set-cookie")
    assert c.jar[COOKIE] == token
    # A new session: the backend's copy goes, tether's own is the one the client gets.
    fresh = env.client()
    r = fresh.request(f"/?set_cookie={evil}")
    names = [sc.name for sc in r.set_cookies]
    assert names == [COOKIE] and r.set_cookie(COOKIE).value != "forged", r.header("set-cookie")
    r = fresh.request("/again")
    assert r.header("set-cookie") == [] and fresh.jar[COOKIE] != "forged", r
    removed = wait_until(lambda: env.envoy.stats(r"tether_backend_cookies_removed")
                         .get(f"{harness.STAT_PREFIX}tether_backend_cookies_removed", 0) >= 2, 5,
                         what="tether_backend_cookies_removed")
    assert removed
