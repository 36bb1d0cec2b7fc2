"""Several Envoy replicas in front of the same backends: a session reaches its endpoint through
any of them.

Cookie sessions carry their endpoint in a sealed token: replicas agree when they share `keys`
(the first key seals, every key opens, so keys rotate without breaking sessions). Without
`keys` each Envoy process seals with a random key of its own, and a token from one replica is
just an unknown session on another: that is the documented behaviour, tested here too.

`learn` and `source_ip` sessions live in each replica's own binding table (Envoy's shared data is
per process). Replicas agree because the first choice for an id is a consistent hash of that id
(envoy/replicas.yaml: the route hashes the session key, override_host falls back to Maglev),
and each replica then pins what it chose.
"""
import http.client
import json

import pytest

import harness
from harness import COOKIE
from topologies import (count_decisions, module_topology, new_key,  # noqa: F401 - fixture
                        route, wait_decisions, with_endpoints)

N_BACKENDS = 3


def cookie_plugin(keys=None) -> dict:
    """envoy/envoy.yaml's plugin config, with `keys` when given."""
    cfg = json.loads(harness.shipped_plugin_config())
    if keys is not None:
        cfg["keys"] = keys
    return cfg


@pytest.fixture(scope="module")
def backends(module_topology):
    return module_topology.add_backends(N_BACKENDS)


@pytest.fixture(scope="module")
def keys():
    return {"old": new_key(), "new": new_key()}


@pytest.fixture(scope="module")
def cookie_fleet(module_topology, backends, keys):
    """Replicas of envoy/envoy.yaml: A, B share the old key; C rotates in the new one (it
    seals with new and still opens old); D has only the new key; E, F list no keys."""
    ports = [b.port for b in backends]
    build = with_endpoints({"app": ports})
    plugins = {
        "A": cookie_plugin([keys["old"]]),
        "B": cookie_plugin([keys["old"]]),
        "C": cookie_plugin([keys["new"], keys["old"]]),
        "D": cookie_plugin([keys["new"]]),
        "E": cookie_plugin(),
        "F": cookie_plugin(),
    }
    return {name: module_topology.add_envoy("envoy.yaml", ports, build=build, plugin_config=p,
                                            name=f"replica-{name}")
            for name, p in plugins.items()}


def session_on(envoy):
    """A new cookie session started through `envoy`: (client, backend that served it)."""
    c = envoy.client()
    r = c.request("/")
    assert r.status == 200 and r.set_cookie(COOKIE) is not None, r
    return c, r.backend


def through(envoy, jar):
    """A client for `envoy` that uses (and updates) this cookie jar."""
    c = envoy.client()
    c.jar = jar
    return c


def test_cookie_issued_by_one_replica_is_honoured_by_another(cookie_fleet):
    a, b = cookie_fleet["A"], cookie_fleet["B"]
    hits_before = {e.name: count_decisions(e, "hit") for e in (a, b)}
    sessions = []
    for i in range(6):  # started through A and through B in turn
        first = (a, b)[i % 2]
        c, backend = session_on(first)
        sessions.append((c.jar, backend, c.jar[COOKIE]))
        c.close()
    assert len({backend for _, backend, _ in sessions}) >= 2, f"new sessions did not spread: {sessions}"
    # The shipped idle timeout is 30 m: a token is refreshed at most once a minute, so within this
    # test no response may carry a Set-Cookie.
    for idx, (jar, backend, token) in enumerate(sessions):
        clients = [through(a, jar), through(b, jar)]
        for n in range(20):
            c = clients[n % 2]
            r = c.request(f"/replicas/{n}")
            assert r.status == 200, (idx, n, r)
            assert r.backend == backend, (
                f"session {idx} (pinned to {backend}) reached {r.backend} through "
                f"replica-{'AB'[n % 2]} on request {n}")
            assert r.header("set-cookie") == [], (idx, n, c.port, r)
        assert jar[COOKIE] == token
        for c in clients:
            c.close()
    # Every one of those 120 requests was a hit (60 on each replica), none a new session.
    for e in (a, b):
        got = wait_decisions(e, "hit", hits_before[e.name] + 60) - hits_before[e.name]
        assert got == 60, f"{e.name}: {got} hits for 60 requests"


def test_key_rotation(cookie_fleet):
    a, c_rot, d = cookie_fleet["A"], cookie_fleet["C"], cookie_fleet["D"]
    old_sessions = []
    for _ in range(4):
        c, backend = session_on(a)  # sealed with the old key
        old_sessions.append((dict(c.jar), backend))
        c.close()
    # C lists [new, old]: it opens tokens sealed with the old key, and keeps the endpoint.
    for jar, backend in old_sessions:
        c = through(c_rot, dict(jar))
        for n in range(5):
            r = c.request("/rotating")
            assert r.status == 200 and r.backend == backend, (n, backend, r)
            assert r.header("set-cookie") == [], f"replica C did not honour an old-key token: {r}"
        c.close()
    # D lists only [new]: an old-key token is an unknown session there: a new cookie.
    new_before = count_decisions(d, "new")
    for jar, backend in old_sessions:
        c = through(d, dict(jar))
        r = c.request("/rotated")
        assert r.status == 200, r
        sc = r.set_cookie(COOKIE)
        assert sc is not None and sc.value != jar[COOKIE], (
            f"replica D (keys: [new]) honoured a token sealed with the old key: {r}")
        # ...and that new session is sticky on D
        for _ in range(3):
            r2 = c.request("/rotated")
            assert r2.status == 200 and r2.backend == r.backend and r2.header("set-cookie") == [], r2
        c.close()
    assert wait_decisions(d, "new", new_before + 4) - new_before == 4
    assert any("reason=unknown_session" in line for line in d.decisions()
               if line.startswith("decision=new")), d.decisions()[-10:]
    # Tokens that C seals (new key) are opened by D, and no longer by A (old key only).
    for _ in range(3):
        c, backend = session_on(c_rot)
        jar = dict(c.jar)
        c.close()
        c = through(d, dict(jar))
        r = c.request("/new-key")
        assert r.status == 200 and r.backend == backend and r.header("set-cookie") == [], r
        c.close()
        c = through(a, dict(jar))
        r = c.request("/new-key")
        assert r.status == 200 and r.set_cookie(COOKIE) is not None, (
            f"replica A (keys: [old]) honoured a token sealed with the new key: {r}")
        c.close()


def test_without_keys_a_token_is_only_good_on_its_own_replica(cookie_fleet):
    """No `keys`: each Envoy process seals with its own random key (documented). A token from E
    is an unknown session on F, which issues a new cookie; E still honours its own token."""
    e, f = cookie_fleet["E"], cookie_fleet["F"]
    new_before = count_decisions(f, "new")
    for _ in range(4):
        c, backend = session_on(e)
        jar = dict(c.jar)
        c.close()
        other = through(f, dict(jar))
        r = other.request("/elsewhere")
        assert r.status == 200, r
        sc = r.set_cookie(COOKIE)
        assert sc is not None and sc.value != jar[COOKIE], (
            f"replica F (no keys) honoured replica E's token (random per-process keys?): {r}")
        other.close()
        own = through(e, dict(jar))
        r = own.request("/home")
        assert r.status == 200 and r.backend == backend and r.header("set-cookie") == [], r
        own.close()
    assert wait_decisions(f, "new", new_before + 4) - new_before == 4


# --------------------------------------------------------------------------------------------
# learn / source_ip: separate tables, agreement through a consistent-hash first choice


def replicas_pair(topo, backends, then=None, plugin_config=harness.SHIPPED, label="learn"):
    ports = [b.port for b in backends]
    build = with_endpoints({"app": ports}, then=then)
    return [topo.add_envoy("replicas.yaml", ports, build=build, plugin_config=plugin_config,
                           name=f"{label}-{x}") for x in "AB"]


def agree(pair, ids, send):
    """Send each id first through one replica, then the other, then alternating (8 requests).
    Returns id -> the one backend it reached; fails if any request reached another."""
    landed = {}
    for i, sid in enumerate(ids):
        order = pair if i % 2 == 0 else pair[::-1]
        seen = []
        for n in range(8):
            r = send(order[n % 2], sid, n)
            assert r.status == 200, (sid, n, r)
            seen.append((order[n % 2].name, r.backend))
        backends = {b for _, b in seen}
        assert len(backends) == 1, f"id {sid!r} reached different endpoints: {seen}"
        landed[sid] = backends.pop()
    return landed


def check_tables(pair, n_ids, per_replica):
    """Each replica made one binding per id (decision=new) and pinned the rest (hits)."""
    for e in pair:
        new = wait_decisions(e, "new", n_ids)
        hits = wait_decisions(e, "hit", per_replica - n_ids)
        assert (new, hits) == (n_ids, per_replica - n_ids), (
            f"{e.name}: {new} new / {hits} hits, expected {n_ids} / {per_replica - n_ids}; "
            f"last decisions: {e.decisions()[-5:]}")


def test_learn_header_replicas_agree_through_consistent_hash(module_topology, backends):
    pair = replicas_pair(module_topology, backends)
    ids = [f"user-{i:02d}" for i in range(20)]

    def send(envoy, sid, n):
        c = envoy.client()
        try:
            return c.request(f"/learn/{n}", headers={"x-session-id": sid}, cookie=None)
        finally:
            c.close()

    landed = agree(pair, ids, send)
    assert len(set(landed.values())) >= 2, f"20 ids all hashed to one endpoint: {landed}"
    check_tables(pair, len(ids), per_replica=len(ids) * 4)


def test_source_ip_replicas_agree_through_consistent_hash(module_topology, backends):
    sources = [f"127.0.0.{i}" for i in range(2, 22)]  # 127.0.0.0/8 is all loopback on Linux
    try:
        probe = backends[0]
        conn = http.client.HTTPConnection(harness.HOST, probe.port, timeout=2,
                                                  source_address=(sources[-1], 0))
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        conn.close()
    except OSError as exc:
        pytest.fail(f"cannot send from {sources[-1]} (needed for distinct client addresses): {exc}")

    def then(cfg, envoy):
        # envoy/replicas.yaml's comment: for source_ip, hash the client address instead
        route(cfg, "app")["route"]["hash_policy"] = [{"connection_properties": {"source_ip": True}}]

    plugin = {"type": "source_ip", "idle_timeout": "30m", "upstream": {"host_header": "x-tether-host"}}
    pair = replicas_pair(module_topology, backends, then=then, plugin_config=plugin, label="srcip")

    def send(envoy, sid, n):
        c = envoy.client(source_ip=sid)
        try:
            return c.request(f"/source-ip/{n}", cookie=None)
        finally:
            c.close()

    landed = agree(pair, sources, send)
    assert len(set(landed.values())) >= 2, f"20 addresses all hashed to one endpoint: {landed}"
    check_tables(pair, len(sources), per_replica=len(sources) * 4)
    # replicas.yaml sets use_remote_address: a client-sent X-Forwarded-For changes neither the
    # hash nor tether's session key (Envoy's default would take the address from it)
    for i, source in enumerate(sources[:6]):
        for envoy in pair:
            c = envoy.client(source_ip=source)
            r = c.request("/forged-xff", cookie=None,
                          headers={"x-forwarded-for": f"198.51.100.{i + 1}"})
            c.close()
            assert r.status == 200 and r.backend == landed[source], (
                f"{source} is pinned to {landed[source]}; with a forged X-Forwarded-For it "
                f"reached {r.backend} through {envoy.name}")
    check_tables(pair, len(sources), per_replica=len(sources) * 4 + 6)
