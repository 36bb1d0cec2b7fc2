"""Canary release with envoy/canary.yaml: sessions keep their cluster and endpoint while the
traffic split changes at run time.

New sessions are split by the `split` route's weighted_clusters, whose weights Envoy reads from
the runtime keys `routing.traffic_split.app.<cluster>` (runtime_key_prefix + "." + cluster name;
measured in Envoy 1.40: POST /runtime_modify changes the split at once). tether records the
serving cluster in the session and sets x-tether-cluster on its later requests; the
`pinned-<cluster>` routes match that header. A client-sent x-tether-cluster is removed first.
"""
import collections
import json
import time

import pytest

import harness
from harness import COOKIE
from topologies import module_topology, new_sessions, plugin, route, shipped, with_endpoints  # noqa: F401 - fixture

STABLE, CANARY = "app-stable", "app-canary"
KEY = "routing.traffic_split.app"


def test_shipped_split_reads_the_documented_runtime_keys():
    """The keys canary.yaml's comment tells operators to POST are the ones its route reads."""
    cfg = shipped("canary.yaml")
    weighted = route(cfg, "split")["route"]["weighted_clusters"]
    assert weighted["runtime_key_prefix"] == KEY
    names = [c["name"] for c in weighted["clusters"]]
    assert names == [STABLE, CANARY]
    (static, admin) = cfg["layered_runtime"]["layers"]
    assert "admin_layer" in admin, "without an admin layer /runtime_modify cannot change the split"
    assert set(static["static_layer"]) == {f"{KEY}.{n}" for n in names}
    assert json.loads(plugin(cfg))["upstream"]["cluster_header"] == "x-tether-cluster"


@pytest.fixture(scope="module")
def canary(module_topology):
    stable = module_topology.add_backends(2, "stable")
    canary = module_topology.add_backends(2, "canary")
    ports = {STABLE: [b.port for b in stable], CANARY: [b.port for b in canary]}
    envoy = module_topology.add_envoy("canary.yaml", ports[STABLE] + ports[CANARY],
                                      build=with_endpoints(ports), name="canary-envoy")
    return envoy


def cluster_of(backend: str) -> str:
    return STABLE if backend.startswith("stable-") else CANARY


def split(envoy, stable: int, canary: int):
    envoy.set_runtime(**{f"{KEY}.{STABLE}": stable, f"{KEY}.{CANARY}": canary})
    values = envoy.runtime()
    assert (values.get(f"{KEY}.{STABLE}"), values.get(f"{KEY}.{CANARY}")) == (str(stable), str(canary)), values


def test_sessions_keep_cluster_and_endpoint_when_the_split_changes(canary):
    envoy = canary
    split(envoy, 50, 50)
    sessions = []
    for _ in range(30):
        c = envoy.client()
        r = c.request("/start")
        assert r.status == 200 and r.set_cookie(COOKIE) is not None, r
        sessions.append((c, r.backend))
    per_cluster = collections.Counter(cluster_of(b) for _, b in sessions)
    assert per_cluster[STABLE] >= 5 and per_cluster[CANARY] >= 5, (
        f"a 50/50 split gave {dict(per_cluster)} over 30 sessions")
    assert len({b for _, b in sessions}) == 4, sessions
    for idx, (c, backend) in enumerate(sessions):
        for n in range(10):
            r = c.request(f"/s/{n}")
            assert r.status == 200 and r.backend == backend, (idx, n, backend, r)
            assert r.header("set-cookie") == [], (idx, n, r)
            seen = r.echoed_headers()
            assert "x-tether-cluster" not in seen and "x-tether-host" not in seen, seen

    # the canary gets no new traffic from now on
    split(envoy, 100, 0)
    fresh = new_sessions(envoy, 20, "/after-split")
    assert set(fresh) == {"stable-1", "stable-2"}, f"new sessions with canary weight 0: {dict(fresh)}"
    # ...but sessions already on the canary keep it, and their endpoint
    for idx, (c, backend) in enumerate(sessions):
        for n in range(5):
            r = c.request(f"/after-split/{n}")
            assert r.status == 200 and r.backend == backend, (
                f"session {idx} on {backend} ({cluster_of(backend)}) reached {r.backend} "
                f"after the split went to 100/0 (request {n})")
            assert r.header("set-cookie") == [], r
    for c, _ in sessions:
        c.close()


def test_client_cannot_choose_the_cluster(canary):
    envoy = canary
    split(envoy, 100, 0)
    canary_hosts = []
    for _ in range(10):
        c = envoy.client()
        r = c.request("/forged", headers={"x-tether-cluster": CANARY})
        assert r.status == 200, r
        canary_hosts.append(r.backend)
        seen = r.echoed_headers()
        assert "x-tether-cluster" not in seen, seen
        c.close()
    assert all(b.startswith("stable-") for b in canary_hosts), (
        f"a client-sent x-tether-cluster: {CANARY} chose the cluster: {canary_hosts}")
    # a session on stable that forges the header stays where it is
    c = envoy.client()
    first = c.request("/mine")
    for _ in range(5):
        r = c.request("/mine", headers={"x-tether-cluster": CANARY})
        assert r.status == 200 and r.backend == first.backend and r.header("set-cookie") == [], r
    c.close()


def test_dead_canary_endpoint_moves_session_within_the_canary(canary, module_topology):
    """The pinned-canary route's retry stays in app-canary: the session is re-bound to the
    other canary endpoint, not to stable, even with the canary's weight at 0."""
    envoy = canary
    split(envoy, 50, 50)
    victim = module_topology.backends["canary-1"]
    c = None
    for _ in range(20):
        c = envoy.client()
        r = c.request("/find-canary-1")
        if r.backend == "canary-1":
            break
        c.close()
        c = None
    assert c is not None, "no new session landed on canary-1 in 20 tries"
    split(envoy, 100, 0)
    victim.kill()
    try:
        r = c.request("/after-death")
        assert r.status == 200 and r.backend == "canary-2", r
        assert r.set_cookie(COOKIE) is not None, r
        for n in range(5):
            r = c.request(f"/after-death/{n}")
            assert r.status == 200 and r.backend == "canary-2" and r.header("set-cookie") == [], r
    finally:
        c.close()
        victim.start()
        envoy.wait_health({victim.port: True}, timeout=10)


def test_sessions_leave_a_dead_canary(canary, module_topology):
    """Rolling a canary back by stopping it: with on_unavailable=rebalance (the default) its
    sessions must end up on stable (a request or two may fail while Envoy cannot re-route)."""
    envoy = canary
    split(envoy, 0, 100)
    c = envoy.client()
    r = c.request("/on-canary")
    assert r.status == 200 and cluster_of(r.backend) == CANARY, r
    split(envoy, 100, 0)
    victims = [module_topology.backends[n] for n in ("canary-1", "canary-2")]
    try:
        for v in victims:
            v.kill()
        envoy.wait_health({v.port: False for v in victims}, timeout=10)
        seen = []
        for n in range(5):
            r = c.request(f"/canary-gone/{n}")
            seen.append((r.status, r.backend, bool(r.header("set-cookie"))))
            if r.status == 200:
                break
        assert r.status == 200 and cluster_of(r.backend) == STABLE, (
            f"a session on the dead canary never reached stable in 5 requests: {seen}; "
            f"tether: {envoy.decisions()[-3:]}")
        for n in range(3):
            r2 = c.request(f"/canary-gone/after/{n}")
            assert r2.status == 200 and r2.backend == r.backend and r2.header("set-cookie") == [], r2
    finally:
        c.close()
        for v in victims:
            if not v.alive():
                v.start()
        envoy.wait_health({v.port: True for v in victims}, timeout=10)


def test_endpoint_figures_carry_each_endpoints_own_cluster(canary, module_topology):
    """After the tests above (sessions in both clusters, a canary session moved to stable), every
    per-endpoint series names the cluster its endpoint belongs to, the endpoint a session left
    included, whichever worker counted it."""
    from test_endpoint_metrics import samples

    cluster_by_address = {b.address: cluster_of(name) for name, b in module_topology.backends.items()}
    envoy = canary
    c = envoy.client()
    assert c.request("/figures").status == 200
    assert c.request("/figures/again").status == 200
    time.sleep(1.5)  # the Wasm build hands its figures over once a second
    p = harness.PROM_PREFIX
    seen = collections.defaultdict(set)
    status, body = envoy.admin("/stats/prometheus")
    assert status == 200
    for name, labels, value in samples(body):
        if name.startswith(p + "tether_endpoint_") and "cluster" in labels and value > 0:
            assert cluster_by_address[labels["endpoint"]] == labels["cluster"], (name, labels)
            seen[name[len(p):]].add(labels["cluster"])
    assert seen["tether_endpoint_hits"] == {STABLE, CANARY}, dict(seen)
    assert CANARY in seen["tether_endpoint_rebinds_away"], dict(seen)
