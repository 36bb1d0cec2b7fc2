"""`on_unavailable: strict`: a session whose endpoint is down is refused, not moved.

The client gets `unavailable_status` with `Retry-After` and keeps its cookie (no Set-Cookie);
tether sets `x-envoy-max-retries: 0` on a strict session's requests, so the route's retry policy
does not quietly serve it elsewhere. When the endpoint comes back on the same address, the same
cookie is served by it again. New sessions are not affected. (The default, `rebalance`, moves
the session: test_failover.py.)
"""
import json
import time

import harness
from harness import COOKIE, pinned_client


def strict_plugin(**extra) -> dict:
    cfg = json.loads(harness.shipped_plugin_config())
    cfg.update(on_unavailable="strict", **extra)
    return cfg


def retries(stack) -> int:
    return stack.envoy.stats(r"^cluster\.app\.upstream_rq_retry$")["cluster.app.upstream_rq_retry"]


def refusals(stack) -> int:
    return sum(1 for line in stack.envoy.log().splitlines() if "decision=strict_refusal" in line)


def test_strict_refuses_while_endpoint_is_down_then_resumes(make_stack):
    s = make_stack(plugin_config=strict_plugin(unavailable_status=503, retry_after="5s"))
    victim = "backend-2"
    victim_port = s.backends[victim].port
    live = sorted(n for n in s.backends if n != victim)
    sessions = [pinned_client(s, victim)[0] for _ in range(2)]
    sessions.append(pinned_client(s, victim, fresh=True)[0])  # a new connection per request
    tokens = [c.jar[COOKIE] for c in sessions]
    bystanders = {name: pinned_client(s, name)[0] for name in live}
    for c in sessions:
        r = c.request("/before")
        assert r.status == 200 and r.backend == victim and r.header("set-cookie") == [], r

    s.backends[victim].kill()
    retries_before = retries(s)
    refused = 0

    def refused_round(label):
        nonlocal refused
        for idx, c in enumerate(sessions):
            r = c.request(f"/{label}")
            assert r.status == 503, f"session {idx} on dead {victim}, {label}: {r} {r.body[:200]!r}"
            assert r.header("retry-after") == ["5"], r.headers
            assert r.header("set-cookie") == [], f"strict session {idx} was moved: {r}"
            assert r.backend is None, f"a backend answered a refused request: {r}"
            assert c.jar[COOKIE] == tokens[idx]
            refused += 1

    # at once (Envoy may not have noticed yet) ...
    refused_round("just-died")
    # ... and once the health check has marked the endpoint down (override_host ignores health)
    s.envoy.wait_health({victim_port: False}, timeout=10)
    for _ in range(2):
        refused_round("still-dead")
    got_retries = retries(s) - retries_before
    assert got_retries == 0, (
        f"the route retried {got_retries} strict pinned request(s) elsewhere "
        f"(tether should send x-envoy-max-retries: 0)")
    deadline = time.monotonic() + 3
    while refusals(s) < refused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refusals(s) >= refused, f"{refusals(s)} decision=strict_refusal lines for {refused} refusals"

    # new sessions still work, on live endpoints only
    served = []
    for _ in range(8):
        c = s.client()
        r = c.request("/new")
        assert r.status == 200 and r.set_cookie(COOKIE) is not None, r
        served.append(r.backend)
        c.close()
    assert set(served) == set(live), served
    for name, c in bystanders.items():
        for _ in range(3):
            r = c.request("/bystander")
            assert r.status == 200 and r.backend == name and r.header("set-cookie") == [], r

    # the endpoint comes back on the same address: the same cookies reach it again
    s.backends[victim].start()
    deadline = time.monotonic() + 10
    first = None
    while time.monotonic() < deadline:
        first = sessions[0].request("/back")
        if first.status == 200:
            break
        time.sleep(0.2)
    assert first is not None and first.status == 200, f"not served after {victim} restarted: {first}"
    for idx, c in enumerate(sessions):
        for n in range(3):
            r = c.request(f"/back/{n}")
            assert r.status == 200 and r.backend == victim, (idx, n, r)
            assert r.header("set-cookie") == [], r
            assert r.header("retry-after") == [], r
        assert c.jar[COOKIE] == tokens[idx]


def test_strict_custom_status_and_retry_after(make_stack):
    s = make_stack(plugin_config=strict_plugin(unavailable_status=429, retry_after="2s"))
    victim = "backend-1"
    c, _ = pinned_client(s, victim)
    token = c.jar[COOKIE]
    s.backends[victim].kill()
    for n in range(3):
        r = c.request(f"/custom/{n}")
        assert r.status == 429, r
        assert r.header("retry-after") == ["2"], r.headers
        assert r.header("set-cookie") == [], r
    assert c.jar[COOKIE] == token
    fresh = s.client()
    r = fresh.request("/new")
    assert r.status == 200 and r.backend != victim, r
