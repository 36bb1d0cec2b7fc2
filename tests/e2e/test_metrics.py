"""tether's metrics (`tether_*`) as Envoy's /stats and /stats/prometheus show them.

Envoy 1.40 lists them as `wasmcustom.tether_*` in /stats and as `tether_*` (no `envoy_` prefix)
in /stats/prometheus; the native build's as `dynamicmodulescustom.tether_*` and
`envoy_dynamicmodulescustom_tether_*`, with one more counter, `tether_panics`.

Each worker hands its counts to Envoy once a second, so every check polls (bounded) until the
figure arrives, then checks that it stays exact.
"""
import re
import time

import harness
from harness import COOKIE, pinned_client, wait_until

COUNTERS = ["tether_sessions_issued", "tether_hits", "tether_rebinds", "tether_expired",
            "tether_invalid_tokens", "tether_forged_headers_removed", "tether_evictions",
            "tether_cas_retries", "tether_strict_refusals", "tether_sessions_dropped",
            "tether_sessions_ended",
            "tether_write_failures", "tether_seal_failures", "tether_local_replies",
            "tether_backend_cookies_removed", "tether_ids_too_long", "tether_host_call_failures"]
if harness.BUILD == "native":
    COUNTERS.append("tether_panics")
GAUGES = ["tether_live_bindings"]
FLUSH_S = 1.0  # the filter's tick


def tether_stats(stack) -> dict[str, int]:
    prefix = harness.STAT_PREFIX
    return {k[len(prefix):]: v for k, v in stack.envoy.stats("^" + re.escape(prefix) + "tether_").items()
            if k.startswith(prefix + "tether_")}


def settle(stack, want: dict[str, int], timeout: float = 6.0) -> dict[str, int]:
    """Wait (bounded) until every named stat has its value; then one more flush must not move it."""
    got: dict[str, int] = {}

    def arrived():
        got.clear()
        got.update(tether_stats(stack))
        return all(got.get(k) == v for k, v in want.items())

    try:
        wait_until(arrived, timeout, interval=0.1, what=f"stats {want}")
    except TimeoutError:
        raise AssertionError(f"want {want}, /stats says {got}") from None
    time.sleep(FLUSH_S * 1.5)
    again = tether_stats(stack)
    assert {k: again.get(k) for k in want} == want, f"stats moved after settling: {again}"
    return again


def test_every_metric_is_defined_at_start(make_stack):
    s = make_stack()
    stats = tether_stats(s)
    assert sorted(stats) == sorted(COUNTERS + GAUGES), stats
    assert all(v == 0 for v in stats.values()), stats


def test_cookie_sessions_hits_forged_headers_and_invalid_tokens(make_stack):
    s = make_stack()
    c = s.client()
    first = c.request("/")
    assert first.set_cookie(COOKIE) is not None
    for _ in range(5):
        assert c.request("/").backend == first.backend
    # a client-sent routing header is removed (and the session still hits its endpoint)
    r = c.request("/", headers=[("x-tether-host", "127.0.0.1:1")])
    assert r.backend == first.backend
    # a token that does not open: treated as no session, counted as invalid, a new one issued
    forged = s.client()
    r = forged.request("/", cookie=f"{COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert r.status == 200 and r.set_cookie(COOKIE) is not None
    settle(s, {"tether_sessions_issued": 2, "tether_hits": 6, "tether_forged_headers_removed": 1,
               "tether_invalid_tokens": 1, "tether_rebinds": 0, "tether_expired": 0,
               "tether_live_bindings": 0})


def test_rebinds_when_the_endpoint_dies(make_stack):
    s = make_stack()
    c, first = pinned_client(s, "backend-2")
    s.kill_backend("backend-2")
    r = c.request("/")
    assert r.status == 200 and r.backend != "backend-2", r
    assert c.request("/").backend == r.backend
    settle(s, {"tether_rebinds": 1, "tether_hits": 1})


def test_learned_bindings_evictions_and_expiry(make_stack):
    # One bucket of 8 slots: the 9th id pushes out the least recent live binding.
    idle_s = 4.0
    s = make_stack({"type": "learn", "learn_from": "header", "session_name": "x-session-id",
                    "max_sessions": 8, "idle_timeout": f"{idle_s:g}s"})
    c = s.client()
    for i in range(12):
        r = c.request("/", cookie=None, headers=[("x-session-id", f"id-{i}")])
        assert r.status == 200
    # id-11 is live: a hit.
    assert c.request("/", cookie=None, headers=[("x-session-id", "id-11")]).status == 200
    last_use = time.monotonic()
    settle(s, {"tether_sessions_issued": 12, "tether_hits": 1, "tether_live_bindings": 8,
               "tether_evictions": 4, "tether_expired": 0})
    # id-11 outlives its idle timeout: the next request finds it expired and binds it afresh.
    time.sleep(max(0.0, last_use + idle_s + 0.3 - time.monotonic()))
    assert c.request("/", cookie=None, headers=[("x-session-id", "id-11")]).status == 200
    # That write also cleared the bucket's other bindings, all expired by now: 1 held.
    settle(s, {"tether_hits": 1, "tether_expired": 1, "tether_sessions_issued": 13,
               "tether_live_bindings": 1, "tether_evictions": 4})


def test_strict_refusals_are_counted(make_stack):
    s = make_stack({"on_unavailable": "strict"})
    c, _ = pinned_client(s, "backend-1")
    s.kill_backend("backend-1")
    r = c.request("/")
    assert r.status == 503, r
    settle(s, {"tether_strict_refusals": 1, "tether_rebinds": 0})


def test_prometheus_exposition_names_and_types(make_stack):
    s = make_stack()
    c = s.client()
    c.request("/")
    c.request("/")
    settle(s, {"tether_hits": 1, "tether_sessions_issued": 1})
    status, body = s.envoy.admin("/stats/prometheus")
    assert status == 200
    p = harness.PROM_PREFIX
    for name in COUNTERS:
        assert re.search(rf"^# TYPE {p}{name} counter$", body, re.M), f"{name} not a counter:\n{body[:400]}"
    for name in GAUGES:
        assert re.search(rf"^# TYPE {p}{name} gauge$", body, re.M), name
    assert re.search(rf"^{p}tether_hits(\{{\}})? 1$", body, re.M), \
        [l for l in body.splitlines() if "tether_hits" in l]
    assert re.search(rf"^{p}tether_sessions_issued(\{{\}})? 1$", body, re.M)


def admin_post(stack, path: str):
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{stack.envoy.admin_port}{path}", method="POST")
    with urllib.request.urlopen(req, timeout=2.0) as r:
        assert r.status == 200


def test_decision_lines_follow_envoys_log_level(make_stack):
    """One debug line per decision while Envoy's `wasm` logger is at debug; none (not even
    formatted) at info. A change through /logging takes effect within a tick."""
    s = make_stack()
    c = s.client()
    r = c.request("/")
    first = r.backend
    wait_until(lambda: len([l for l in s.envoy.log().splitlines() if "decision=new" in l]) == 1,
               3.0, what="the decision=new line")
    admin_post(s, f"/logging?{harness.LOGGER}=info")
    time.sleep(FLUSH_S * 1.5)
    before = len([l for l in s.envoy.log().splitlines() if "decision=" in l])
    for _ in range(5):
        assert c.request("/").backend == first
    time.sleep(0.3)
    assert len([l for l in s.envoy.log().splitlines() if "decision=" in l]) == before
    admin_post(s, f"/logging?{harness.LOGGER}=debug")
    time.sleep(FLUSH_S * 1.5)
    for _ in range(3):
        assert c.request("/").backend == first
    wait_until(lambda: len([l for l in s.envoy.log().splitlines() if "decision=hit" in l]) == 3,
               3.0, what=f"3 decision=hit lines after /logging?{harness.LOGGER}=debug")
    settle(s, {"tether_hits": 8, "tether_sessions_issued": 1})
