"""A live endpoint keeps its sessions (issue #12, defect 1).

Envoy's own replies once it chose the pinned endpoint (a route timeout, a circuit breaker's
overflow) say nothing against the endpoint: the session is kept, with no Set-Cookie at all, and
the next request reaches the same endpoint. A long-poll through the shipped route (no route
timeout, no per-try timeout) is answered by its own endpoint however long it is held. A session
moves only when its endpoint cannot be reached (test_failover.py) and is let go only when no
endpoint of its cluster can be reached.
"""
import threading

import pytest

import harness
from harness import COOKIE, pinned_client, wait_until


def kept_lines(stack) -> list[str]:
    return [l for l in stack.envoy.log().splitlines() if "decision=kept" in l]


def with_route(timeout: str | None = None, max_requests: int | None = None):
    """A mutation of the shipped config: the `app` route's timeout, the cluster's limit."""
    def mutate(cfg):
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
            if timeout is not None:
                route["route"]["timeout"] = timeout
        if max_requests is not None:
            cluster = next(c for c in cfg["static_resources"]["clusters"] if c["name"] == "app")
            cluster["circuit_breakers"]["thresholds"][0].update(
                max_requests=max_requests, max_pending_requests=max_requests)
    return mutate


LEARN = {"type": "learn", "learn_from": "header", "session_name": "x-sid"}


@pytest.mark.parametrize("kind", ["cookie", "learn"])
def test_a_route_timeout_keeps_the_session(make_stack, kind):
    """Before: `Set-Cookie: tether=; Max-Age=0` on Envoy's 504, and the next request was
    load-balanced elsewhere (for `learn`, the binding was removed)."""
    s = make_stack(plugin_config=LEARN if kind == "learn" else harness.SHIPPED,
                   mutate=with_route(timeout="1s"))
    if kind == "cookie":
        c, first = pinned_client(s, "backend-2")
        headers = {}
    else:
        c = s.client()
        headers = {"x-sid": "long-running-job"}
        first = c.request("/", headers=headers)
    pinned = first.backend
    for attempt in range(3):
        r = c.request("/slow?delay=3", headers=headers)
        assert r.status == 504, r
        assert r.header("set-cookie") == [], f"Envoy's timeout touched the session: {r}"
    for i in range(6):
        r = c.request(f"/after/{i}", headers=headers)
        assert r.status == 200 and r.backend == pinned, f"session left {pinned}: {r}"
        assert r.header("set-cookie") == [], r
    assert len(kept_lines(s)) >= 3, kept_lines(s)


def test_a_circuit_breakers_overflow_keeps_the_session(make_stack):
    s = make_stack(mutate=with_route(max_requests=1))
    c, first = pinned_client(s, "backend-3")
    token = c.jar[COOKIE]
    # One request holds the cluster's only slot; the session's next request overflows.
    holder = s.client()
    holding = threading.Thread(target=lambda: holder.request("/hold?delay=2", cookie=None,
                                                             update_jar=False), daemon=True)
    holding.start()
    wait_until(lambda: s.envoy.stats(r"^cluster\.app\.upstream_rq_active$")
               .get("cluster.app.upstream_rq_active") == 1, 5, what="the slot is taken")
    r = c.request("/overflow")
    assert r.status == 503, r
    assert r.header("set-cookie") == [], f"an overflow ended the session: {r}"
    holding.join(10)
    assert not holding.is_alive()
    r = c.request("/after")
    assert r.status == 200 and r.backend == "backend-3" and r.header("set-cookie") == [], r
    assert c.jar[COOKIE] == token
    assert any("details=upstream_reset_before_response_started{overflow}" in l
               or "details=overflow" in l for l in kept_lines(s)), kept_lines(s)


def test_a_long_poll_through_the_shipped_route_stays_on_its_endpoint(make_stack):
    """Before: the shipped route's 5 s per_try_timeout retried the held request on another
    endpoint, which did not know the session, and tether re-bound the session there."""
    s = make_stack()
    c, _ = pinned_client(s, "backend-1")
    token = c.jar[COOKIE]
    c.timeout = 20
    r = c.request("/poll?delay=7")
    assert r.status == 200 and r.backend == "backend-1", r
    assert r.header("set-cookie") == [], r
    assert r.elapsed >= 7
    assert c.jar[COOKIE] == token
    retries = s.envoy.stats(r"^cluster\.app\.upstream_rq_retry$").get("cluster.app.upstream_rq_retry")
    assert retries == 0, f"the held request was retried elsewhere ({retries} retries)"


def test_no_endpoint_of_the_cluster_reachable_lets_the_session_go(make_stack):
    s = make_stack(n_backends=2)
    c, _ = pinned_client(s, "backend-1")
    for b in s.backends.values():
        b.kill()
    r = c.request("/all-down")
    assert r.status == 503, r
    cleared = r.set_cookie(COOKIE)
    assert cleared is not None and cleared.get("max-age") == "0", r
    assert any("decision=dropped" in l for l in s.envoy.log().splitlines())
