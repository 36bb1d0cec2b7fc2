"""New sessions get a cookie and are load-balanced; a valid cookie pins; clients cannot steer."""
import pytest

from harness import COOKIE, ROUTING_HEADER, envoy_problems, pinned_client


def assert_round_robin(backends, all_names):
    """Every window of len(all_names) consecutive picks on one worker covers every endpoint."""
    n = len(all_names)
    for i in range(0, len(backends) - n + 1):
        window = backends[i:i + n]
        assert set(window) == set(all_names), f"not round robin: {backends}"


def test_new_session_gets_default_cookie(env):
    c = env.client()
    r = c.request("/")
    assert r.status == 200
    assert r.backend in env.backends
    assert len(r.header("set-cookie")) == 1, r.header("set-cookie")
    sc = r.set_cookie(COOKIE)
    assert sc is not None, f"no Set-Cookie named {COOKIE!r}: {r.header('set-cookie')}"
    assert sc.value, f"empty session value: {sc.raw!r}"
    assert sc.get("path") == "/", sc.raw
    assert sc.has("httponly") and sc.get("httponly") is None, sc.raw
    assert (sc.get("samesite") or "").lower() == "lax", sc.raw
    # lifetime_type "session": a browser-session cookie
    assert not sc.has("max-age") and not sc.has("expires"), sc.raw
    assert not sc.has("secure") and not sc.has("domain"), sc.raw
    assert set(sc.attrs) == {"path", "httponly", "samesite"}, sc.raw


def test_cookie_path_is_root_for_any_request_path(env):
    r = env.client().request("/some/deep/path?q=1")
    assert r.status == 200
    sc = r.set_cookie(COOKIE)
    assert sc is not None and sc.get("path") == "/", r.header("set-cookie")


@pytest.mark.parametrize("fresh", [False, True], ids=["keepalive", "new-connection-each"])
def test_valid_cookie_pins_to_bound_endpoint(env, fresh):
    c = env.client(fresh=fresh)
    first = c.request("/")
    assert first.status == 200 and first.set_cookie(COOKIE) is not None
    pinned = first.backend
    value = c.jar[COOKIE]
    for i in range(20):
        r = c.request(f"/page/{i}")
        assert r.status == 200
        assert r.backend == pinned, f"request {i} left {pinned} for {r.backend}"
        assert r.header("set-cookie") == [], f"request {i} with a valid session got {r.header('set-cookie')}"
    assert c.jar[COOKIE] == value


def test_new_sessions_round_robin_and_each_pins(env):
    names = sorted(env.backends)
    c = env.client()  # one connection: one worker, one round-robin sequence
    issued = []
    for _ in range(3 * len(names)):
        r = c.request("/", cookie=None, update_jar=False)
        assert r.status == 200
        sc = r.set_cookie(COOKIE)
        assert sc is not None, r
        issued.append((sc.value, r.backend))
    assert_round_robin([b for _, b in issued], names)
    values = [v for v, _ in issued]
    assert len(set(values)) == len(values), f"session values repeat: {values}"
    # every one of these sessions is pinned to the endpoint that created it, from any worker
    for value, backend in issued:
        other = env.client(fresh=True)
        for _ in range(3):
            r = other.request("/", cookie=f"{COOKIE}={value}")
            assert r.status == 200
            assert r.backend == backend, f"session {value} bound to {backend} went to {r.backend}"
            assert r.header("set-cookie") == []


def _forged_values(env, target):
    a = env.backends[target].address
    others = [b.address for n, b in sorted(env.backends.items()) if n != target]
    return [
        [(ROUTING_HEADER, a)],
        [("X-Tether-Host", a)],
        [(ROUTING_HEADER, f"{a},{others[0]}")],
        [(ROUTING_HEADER, a), (ROUTING_HEADER, a)],
    ]


def test_client_routing_header_ignored_without_cookie(env):
    names = sorted(env.backends)
    target = names[0]
    for forged in _forged_values(env, target):
        c = env.client()
        served = []
        for _ in range(2 * len(names)):
            r = c.request("/", cookie=None, headers=forged, update_jar=False)
            assert r.status == 200
            assert r.set_cookie(COOKIE) is not None, f"new session without cookie: {r}"
            assert ROUTING_HEADER not in r.echoed_headers(), r.echoed_headers()
            served.append(r.backend)
        assert_round_robin(served, names)
        c.close()


def test_client_routing_header_ignored_with_cookie(env):
    names = sorted(env.backends)
    for pinned in names:
        c, _ = pinned_client(env, pinned)
        for target in names:
            if target == pinned:
                continue
            for forged in _forged_values(env, target):
                for _ in range(3):
                    r = c.request("/", headers=forged)
                    assert r.status == 200
                    assert r.backend == pinned, (
                        f"forged {forged} moved a session pinned to {pinned} to {r.backend}")
                    assert r.header("set-cookie") == [], r
                    assert ROUTING_HEADER not in r.echoed_headers(), r.echoed_headers()
        c.close()


def test_backend_never_sees_routing_header(env):
    c = env.client()
    for i in range(5):
        r = c.request(f"/echo/{i}")
        assert r.status == 200
        headers = r.echoed_headers()
        assert ROUTING_HEADER not in headers, f"backend saw {ROUTING_HEADER}: {headers}"


def test_sessions_are_independent(env):
    a, b = env.client(), env.client()
    ra, rb = a.request("/"), b.request("/")
    assert a.jar[COOKIE] != b.jar[COOKIE]
    for _ in range(5):
        assert a.request("/").backend == ra.backend
        assert b.request("/").backend == rb.backend


def test_custom_cookie_attributes(make_stack):
    s = make_stack({
        "session_name": "sid",
        "cookie": {"path": "/app", "domain": "example.com", "secure": True, "http_only": False,
                   "same_site": "strict", "lifetime_type": "permanent"},
        "absolute_timeout": "1h30m",
        "idle_timeout": "10m",
    })
    c = s.client()
    r = c.request("/app/x")
    assert r.status == 200
    assert [sc.name for sc in r.set_cookies] == ["sid"], r.header("set-cookie")
    sc = r.set_cookie("sid")
    assert sc.get("path") == "/app", sc.raw
    assert sc.get("domain") == "example.com", sc.raw
    assert sc.has("secure"), sc.raw
    assert not sc.has("httponly"), sc.raw
    assert (sc.get("samesite") or "").lower() == "strict", sc.raw
    assert sc.get("max-age") == "5400", sc.raw
    pinned = r.backend
    for i in range(10):
        r = c.request(f"/app/{i}")
        assert r.status == 200 and r.backend == pinned and r.header("set-cookie") == [], r
    # a cookie under the default name is not this plugin's session
    r = c.request("/app/y", cookie=f"{COOKIE}={c.jar['sid']}")
    assert r.set_cookie("sid") is not None, r


def test_permanent_cookie_partial_cookie_config(make_stack):
    s = make_stack({"cookie": {"lifetime_type": "permanent", "secure": True, "domain": "example.com"},
                    "absolute_timeout": "2h"})
    r = s.client().request("/")
    assert r.status == 200
    sc = r.set_cookie(COOKIE)
    assert sc is not None, r.header("set-cookie")
    assert sc.get("max-age") == "7200", sc.raw
    assert sc.get("path") == "/", sc.raw
    assert sc.has("httponly"), sc.raw
    assert (sc.get("samesite") or "").lower() == "lax", sc.raw
    assert sc.has("secure"), sc.raw
    assert sc.get("domain") == "example.com", sc.raw


def test_zz_envoy_still_ready(env):
    assert envoy_problems(env) == []
