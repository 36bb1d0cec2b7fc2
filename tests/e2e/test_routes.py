"""`routes`: per-route policies keyed by Envoy route name; two routes never share sessions."""
import re

import pytest

from harness import COOKIE, FILTER, ROUTING_HEADER, add_app_routes

CART = "cart"
PLUGIN = {
    "type": "cookie", "session_name": COOKIE,
    "routes": {"cart": {"session_name": CART}, "api": {"disabled": True}},
}


def add_routes(cfg):
    """Routes `cart` (/cart), `api` (/api) and `static` (/static) before the catch-all `app`,
    same cluster and retries. On `static`, Envoy itself turns the filter off (route-level
    `FilterConfig`): tether never runs there, not even its per-route lookup."""
    add_app_routes(cfg, (("cart", "/cart"), ("api", "/api"), ("static", "/static")))
    vhost = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]
    static = next(r for r in vhost["routes"] if r.get("name") == "static")
    static["typed_per_filter_config"] = {FILTER: {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}


@pytest.fixture(scope="module")
def rs(module_stacks):
    return module_stacks(PLUGIN, mutate=add_routes)


def names(r):
    return sorted(c.name for c in r.set_cookies)


def new_on(stack, path, cookie_name, backend=None, tries=12):
    """A fresh session on `path` (optionally landing on `backend`): (token value, backend)."""
    for _ in range(tries):
        r = stack.client().request(path, cookie=None)
        assert r.status == 200, r
        sc = r.set_cookie(cookie_name)
        assert sc is not None, f"{path}: no {cookie_name} Set-Cookie: {r.header('set-cookie')}"
        if backend is None or r.backend == backend:
            return sc.value, r.backend
    raise AssertionError(f"no new {cookie_name} session on {backend}")


def assert_not_pinned(stack, path, cookie, issued_name):
    """Six requests on one connection carrying `cookie`: new sessions each time, balanced."""
    c = stack.client()
    served = []
    for _ in range(6):
        r = c.request(path, cookie=cookie, update_jar=False)
        assert r.status == 200, r
        assert r.set_cookie(issued_name) is not None, f"{path} with {cookie!r}: no new {issued_name} cookie ({r})"
        served.append(r.backend)
    assert len(set(served)) >= 2, f"{path} with {cookie!r} stayed pinned: {served}"


def no_session_requests(stack, prefix, cookie, stripped=(), n=9):
    """`n` requests under `prefix` carrying `cookie` on one connection: each 200 with no
    Set-Cookie (and none of the `stripped` cookies reaching the backend). The backends served."""
    c = stack.client()
    served = []
    for i in range(n):
        r = c.request(f"{prefix}/{i}", cookie=cookie, update_jar=False)
        assert r.status == 200, r
        assert r.header("set-cookie") == [], f"{prefix} issued {r.header('set-cookie')}"
        assert not [k for k, _ in r.headers if k.lower() in stripped], r.headers
        served.append(r.backend)
    return served


def test_each_route_issues_its_own_cookie(rs):
    r = rs.client().request("/cart/items", cookie=None)
    assert r.status == 200 and names(r) == [CART], r.header("set-cookie")
    r = rs.client().request("/", cookie=None)
    assert r.status == 200 and names(r) == [COOKIE], r.header("set-cookie")
    r = rs.client().request("/other/page", cookie=None)
    assert r.status == 200 and names(r) == [COOKIE], r.header("set-cookie")


def test_each_route_cookie_pins_its_route(rs):
    cart, cart_backend = new_on(rs, "/cart", CART, "backend-1")
    app, app_backend = new_on(rs, "/", COOKIE, "backend-3")
    both = f"{COOKIE}={app}; {CART}={cart}"
    c = rs.client()
    for i in range(5):
        r = c.request(f"/cart/{i}", cookie=both, update_jar=False)
        assert r.status == 200 and r.backend == cart_backend and r.header("set-cookie") == [], r
        r = c.request(f"/page/{i}", cookie=both, update_jar=False)
        assert r.status == 200 and r.backend == app_backend and r.header("set-cookie") == [], r


def test_tether_cookie_does_not_pin_cart(rs):
    app, _ = new_on(rs, "/", COOKIE)
    assert_not_pinned(rs, "/cart", f"{COOKIE}={app}", CART)
    # nor does the same token moved under the cart route's cookie name
    assert_not_pinned(rs, "/cart", f"{CART}={app}", CART)


def test_cart_cookie_does_not_pin_default_route(rs):
    cart, _ = new_on(rs, "/cart", CART)
    assert_not_pinned(rs, "/", f"{CART}={cart}", COOKIE)
    assert_not_pinned(rs, "/", f"{COOKIE}={cart}", COOKIE)


def test_disabled_route_issues_nothing_and_round_robins(rs):
    app, _ = new_on(rs, "/", COOKIE, "backend-2")
    cart, _ = new_on(rs, "/cart", CART, "backend-2")
    before = len(re.findall(r"decision=disabled", rs.envoy.log()))
    served = no_session_requests(rs, "/api", f"{COOKIE}={app}; {CART}={cart}", (COOKIE, CART))
    everyone = sorted(rs.backends)
    for i in range(len(served) - 2):
        assert set(served[i:i + 3]) == set(everyone), f"/api not round robin: {served}"
    after = len(re.findall(r"decision=disabled", rs.envoy.log()))
    assert after - before == 9, f"expected 9 decision=disabled log lines, got {after - before}"


def test_disabled_route_still_strips_routing_header(rs):
    target = rs.backends["backend-1"].address
    c = rs.client()
    served = []
    for i in range(9):
        r = c.request(f"/api/{i}", cookie=None, headers=[(ROUTING_HEADER, target)])
        assert r.status == 200, r
        assert ROUTING_HEADER not in r.echoed_headers(), r.echoed_headers()
        served.append(r.backend)
    assert served.count("backend-1") <= 4, f"a client-sent {ROUTING_HEADER} steered /api: {served}"
    assert len(set(served)) == 3, served
    assert "removed a client-sent x-tether-host" in rs.envoy.log()


def test_route_where_envoy_turns_the_filter_off_never_enters_tether(rs):
    """docs/configuration.md (Routes): the cost-free way to leave a route alone. Envoy skips the filter, so tether makes
    no decision there (no log line, no cookie), and the request is load-balanced."""
    app, _ = new_on(rs, "/", COOKIE, "backend-2")
    log_before = rs.envoy.log().count("decision=")
    served = no_session_requests(rs, "/static", f"{COOKIE}={app}")
    assert len(set(served)) == 3, f"/static not load-balanced: {served}"
    assert rs.envoy.log().count("decision=") == log_before, "tether ran on /static"
    # The same cookie still pins its own route.
    r = rs.client().request("/page", cookie=f"{COOKIE}={app}", update_jar=False)
    assert r.status == 200 and r.backend == "backend-2", r
