"""Draining and retiring endpoints with envoy/draining.yaml (EDS from a watched file).

A DRAINING endpoint keeps the sessions pinned to it and gets no new ones; an endpoint removed
from the EDS file (its process still running) loses its sessions: each is re-bound, with a new
cookie, to the endpoint that served it, and sticks there.
The test copies envoy/eds/app.yaml into a tmp dir, rewrites ports and health_status in memory,
and replaces the file atomically (write + rename), the way the shipped comment tells users to.
"""
import collections
import time

import pytest
import yaml

import harness
from harness import COOKIE, HOST
from topologies import cluster, new_sessions, shipped, topology, write_atomically  # noqa: F401 - fixture

EDS = "eds/app.yaml"


def eds_doc(ports, status=None) -> str:
    """envoy/eds/app.yaml with these endpoints (health_status HEALTHY unless `status` says)."""
    doc = shipped(EDS)
    (assignment,) = doc["resources"]
    (group,) = assignment["endpoints"]
    template = group["lb_endpoints"][0]
    group["lb_endpoints"] = []
    for port in ports:
        entry = yaml.safe_load(yaml.safe_dump(template))
        entry["endpoint"]["address"]["socket_address"].update(address=HOST, port_value=port)
        entry["health_status"] = (status or {}).get(port, "HEALTHY")
        group["lb_endpoints"].append(entry)
    doc["version_info"] = str(time.monotonic_ns())
    return yaml.safe_dump(doc, sort_keys=False)


def start(topology, plugin_config=harness.SHIPPED):
    backends = topology.add_backends(3)
    ports = [b.port for b in backends]
    eds_dir = topology.workdir / "eds"
    eds_dir.mkdir()
    eds_file = eds_dir / "app.yaml"
    write_atomically(eds_file, eds_doc(ports))

    def build(cfg, envoy):
        source = cluster(cfg, "app")["eds_cluster_config"]["eds_config"]["path_config_source"]
        assert source["path"] == f"envoy/{EDS}", source  # the shipped pair belongs together
        source["path"] = str(eds_file)
        source["watched_directory"]["path"] = str(eds_dir)

    envoy = topology.add_envoy("draining.yaml", ports, build=build, name="drain-envoy",
                               plugin_config=plugin_config)
    return topology, envoy, eds_file, ports


@pytest.fixture
def drain_env(topology):
    return start(topology)


def wait_flags(envoy, port, pred, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        flags = envoy.cluster_health().get(("app", port))
        if pred(flags):
            return flags
        if time.monotonic() > deadline:
            raise AssertionError(f"endpoint {port} never became {what}: health flags {flags!r}")
        time.sleep(0.05)


def test_draining_keeps_sessions_and_removal_moves_them(drain_env):
    topo, envoy, eds_file, ports = drain_env
    victim = topo.backends["backend-2"]
    sessions = []
    for _ in range(12):
        c = envoy.client()
        r = c.request("/start")
        assert r.status == 200 and r.set_cookie(COOKIE) is not None, r
        sessions.append((c, r.backend))
    on_victim = [(c, b) for c, b in sessions if b == victim.name]
    others = [(c, b) for c, b in sessions if b != victim.name]
    assert len(on_victim) >= 2, f"round robin put {len(on_victim)} of 12 sessions on {victim.name}"

    # drain backend-2
    write_atomically(eds_file, eds_doc(ports, {victim.port: "DRAINING"}))
    wait_flags(envoy, victim.port, lambda f: f is not None and "eds_status_draining" in f, "DRAINING")
    for c, backend in sessions:
        for n in range(5):
            r = c.request(f"/draining/{n}")
            assert r.status == 200 and r.backend == backend, (
                f"session on {backend} reached {r.backend} while {victim.name} drains")
            assert r.header("set-cookie") == [], r
    fresh = new_sessions(envoy, 15, "/new-while-draining")
    assert victim.name not in fresh, f"a DRAINING endpoint got new sessions: {dict(fresh)}"
    assert set(fresh) == {"backend-1", "backend-3"}, dict(fresh)

    # retire backend-2: gone from EDS, its process still running
    write_atomically(eds_file, eds_doc([p for p in ports if p != victim.port]))
    wait_flags(envoy, victim.port, lambda f: f is None, "removed from the cluster")
    assert victim.alive()
    rebound = {}
    for idx, (c, backend) in enumerate(on_victim):
        old = c.jar[COOKIE]
        r = c.request("/retired")
        assert r.status == 200 and r.backend in ("backend-1", "backend-3"), r
        sc = r.set_cookie(COOKIE)
        assert sc is not None and sc.value != old, f"session {idx} moved without a new cookie: {r}"
        rebound[idx] = r.backend
        for n in range(5):
            r = c.request(f"/retired/{n}")
            assert r.status == 200 and r.backend == rebound[idx], (idx, n, r)
            assert r.header("set-cookie") == [], r
    for c, backend in others:
        for n in range(3):
            r = c.request(f"/others/{n}")
            assert r.status == 200 and r.backend == backend and r.header("set-cookie") == [], r
    for c, _ in sessions:
        c.close()


def test_undrained_endpoint_takes_new_sessions_again(drain_env):
    topo, envoy, eds_file, ports = drain_env
    victim = topo.backends["backend-3"]
    write_atomically(eds_file, eds_doc(ports, {victim.port: "DRAINING"}))
    wait_flags(envoy, victim.port, lambda f: f is not None and "eds_status_draining" in f, "DRAINING")
    write_atomically(eds_file, eds_doc(ports))
    wait_flags(envoy, victim.port, lambda f: f == "healthy", "healthy")
    served = collections.Counter()
    for _ in range(9):
        c = envoy.client()
        r = c.request("/undrained")
        assert r.status == 200, r
        served[r.backend] += 1
        c.close()
    assert served[victim.name] >= 1, dict(served)


def _strict_on_retired_endpoint(topology):
    plugin = {"type": "cookie", "on_unavailable": "strict", "unavailable_status": 503,
              "retry_after": "5s", "upstream": {"host_header": "x-tether-host"}}
    topo, envoy, eds_file, ports = start(topology, plugin)
    victim = topo.backends["backend-2"]
    c = None
    for _ in range(10):
        c = envoy.client()
        if c.request("/find").backend == victim.name:
            break
        c.close()
        c = None
    assert c is not None, f"no new session landed on {victim.name}"
    write_atomically(eds_file, eds_doc([p for p in ports if p != victim.port]))
    wait_flags(envoy, victim.port, lambda f: f is None, "removed from the cluster")
    served_before = envoy.stats(r"^cluster\.app\.upstream_rq_total$")["cluster.app.upstream_rq_total"]
    r = c.request("/order", method="POST")
    served_after = envoy.stats(r"^cluster\.app\.upstream_rq_total$")["cluster.app.upstream_rq_total"]
    c.close()
    return r, served_after - served_before


def test_strict_session_on_retired_endpoint_is_refused_not_moved(topology):
    """The endpoint left the cluster: the client gets the strict refusal, none of another
    backend's answer, and no new cookie (the session is not moved)."""
    r, _ = _strict_on_retired_endpoint(topology)
    assert r.status == 503 and r.header("retry-after") == ["5"], r
    assert r.backend is None, f"another backend's answer reached the client: {r}"
    assert r.header("set-cookie") == [], r


def test_strict_session_on_retired_endpoint_is_not_executed_elsewhere(topology):
    """The app-strict route (x-tether-strict, a subset no endpoint is in, NO_FALLBACK) keeps
    override_host from falling back to another endpoint: nothing runs the refused request."""
    _, executed = _strict_on_retired_endpoint(topology)
    assert executed == 0, f"the refused POST was executed upstream {executed} time(s)"
