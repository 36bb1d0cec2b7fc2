"""tether's figures per upstream endpoint (`tether_endpoint_*`), as /stats/prometheus shows them
after known traffic: exact counts per endpoint and cluster, in both builds.

The Wasm build's series are single stat names that the shipped `stats_tags` (envoy/envoy.yaml)
split into the tags `cluster` and `endpoint`; the native build's are labelled metrics. Either way
the exposition must read `<prefix>tether_endpoint_hits{cluster="app",endpoint="127.0.0.1:P"} N`.
The Wasm build hands its figures over once a second: every check polls (bounded), then checks
that one more flush does not move them.
"""
import re
import time
from collections import Counter

import harness
from harness import CLUSTER, wait_until

FLUSH_S = 1.0
FAMILIES = ["tether_endpoint_sessions_issued", "tether_endpoint_hits",
            "tether_endpoint_rebinds_away", "tether_endpoint_rebinds_to",
            "tether_endpoint_live_bindings"]
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def exposition(stack) -> str:
    status, body = stack.envoy.admin("/stats/prometheus")
    assert status == 200
    return body


def samples(body: str) -> list[tuple[str, dict[str, str], float]]:
    """(metric name, labels, value) of every sample line."""
    out = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def per_endpoint(stack) -> dict[tuple[str, str, str | None], int]:
    """(family, endpoint, cluster or None) -> value, for every tether_endpoint_* sample."""
    p = harness.PROM_PREFIX
    got = {}
    for name, labels, value in samples(exposition(stack)):
        if not name.startswith(p + "tether_endpoint_"):
            continue
        family = name[len(p):]
        assert set(labels) == ({"endpoint"} if family == "tether_endpoint_live_bindings"
                               else {"cluster", "endpoint"}), (name, labels)
        got[(family, labels["endpoint"], labels.get("cluster"))] = int(value)
    return got


def settle(stack, want: dict) -> dict:
    """Wait (bounded) until the per-endpoint series are exactly `want` (series at 0 may be
    absent or present); then one more flush must not move them."""
    got: dict = {}

    def nonzero(d):
        return {k: v for k, v in d.items() if v != 0}

    def arrived():
        got.clear()
        got.update(per_endpoint(stack))
        return nonzero(got) == nonzero(want)

    try:
        wait_until(arrived, 6.0, interval=0.1, what="per-endpoint figures")
    except TimeoutError:
        raise AssertionError(f"want {nonzero(want)},\n/stats/prometheus says {nonzero(got)}") from None
    time.sleep(FLUSH_S * 1.5)
    assert nonzero(per_endpoint(stack)) == nonzero(want), "figures moved after settling"
    return got


def aggregate(stack, name: str) -> int:
    p = harness.PROM_PREFIX
    values = [v for n, labels, v in samples(exposition(stack)) if n == p + name and not labels]
    assert len(values) == 1, name
    return int(values[0])


def address_of(stack) -> dict[str, str]:
    return {name: b.address for name, b in stack.backends.items()}


def test_cookie_sessions_per_endpoint_and_rebinds_after_an_endpoint_dies(make_stack):
    s = make_stack()
    addr = address_of(s)
    want: Counter = Counter()
    clients = []
    # Six new sessions (round robin over three endpoints), then 1..6 returning requests each.
    for i in range(6):
        c = s.client()
        r = c.request("/")
        assert r.status == 200 and harness.COOKIE in c.jar, r
        want[("tether_endpoint_sessions_issued", addr[r.backend], CLUSTER)] += 1
        clients.append((c, r.backend))
    for i, (c, backend) in enumerate(clients):
        for _ in range(i + 1):
            assert c.request("/").backend == backend
            want[("tether_endpoint_hits", addr[backend], CLUSTER)] += 1
    assert len({b for _, b in clients}) >= 2, clients
    settle(s, want)
    # The endpoint of the first session dies: each of its sessions moves once, then hits there.
    dead = clients[0][1]
    s.kill_backend(dead)
    for c, backend in clients:
        if backend != dead:
            continue
        r = c.request("/")
        assert r.status == 200 and r.backend != dead, r
        want[("tether_endpoint_rebinds_away", addr[dead], CLUSTER)] += 1
        want[("tether_endpoint_rebinds_to", addr[r.backend], CLUSTER)] += 1
        assert c.request("/").backend == r.backend
        want[("tether_endpoint_hits", addr[r.backend], CLUSTER)] += 1
    assert want[("tether_endpoint_rebinds_away", addr[dead], CLUSTER)] >= 1
    settle(s, want)
    # The aggregates are the per-endpoint figures summed.
    for family, total in [("tether_hits", "tether_endpoint_hits"),
                          ("tether_sessions_issued", "tether_endpoint_sessions_issued"),
                          ("tether_rebinds", "tether_endpoint_rebinds_to")]:
        assert aggregate(s, family) == sum(v for k, v in want.items() if k[0] == total), family


def learned_traffic(s) -> Counter:
    """Known `learn` traffic: six ids bound, each back once, then the endpoint of id-0 dies and
    its ids move. Returns the per-endpoint figures it must leave."""
    addr = address_of(s)
    want: Counter = Counter()
    c = s.client()
    home = {}
    for i in range(6):
        r = c.request("/", cookie=None, headers=[("x-session-id", f"id-{i}")])
        assert r.status == 200, r
        home[i] = r.backend
        want[("tether_endpoint_sessions_issued", addr[r.backend], CLUSTER)] += 1
        want[("tether_endpoint_live_bindings", addr[r.backend], None)] += 1
    for i in range(6):
        r = c.request("/", cookie=None, headers=[("x-session-id", f"id-{i}")])
        assert r.backend == home[i], (i, r)
        want[("tether_endpoint_hits", addr[r.backend], CLUSTER)] += 1
    assert len(set(home.values())) >= 2, home
    settle(s, want)
    dead = home[0]
    s.kill_backend(dead)
    for i in range(6):
        if home[i] != dead:
            continue
        r = c.request("/", cookie=None, headers=[("x-session-id", f"id-{i}")])
        assert r.status == 200 and r.backend != dead, r
        want[("tether_endpoint_rebinds_away", addr[dead], CLUSTER)] += 1
        want[("tether_endpoint_rebinds_to", addr[r.backend], CLUSTER)] += 1
        want[("tether_endpoint_live_bindings", addr[dead], None)] -= 1
        want[("tether_endpoint_live_bindings", addr[r.backend], None)] += 1
    settle(s, want)
    return want


def test_learned_bindings_per_endpoint_follow_their_sessions(make_stack):
    s = make_stack({"type": "learn", "learn_from": "header", "session_name": "x-session-id"})
    want = learned_traffic(s)
    live = sum(v for k, v in want.items() if k[0] == "tether_endpoint_live_bindings")
    assert live == 6
    assert aggregate(s, "tether_live_bindings") == live


def test_source_ip_bindings_per_endpoint(make_stack):
    s = make_stack({"type": "source_ip"})
    addr = address_of(s)
    want: Counter = Counter()
    for n in range(2, 8):
        c = s.client(source_ip=f"127.0.0.{n}", fresh=True)
        r = c.request("/", cookie=None)
        assert r.status == 200, r
        want[("tether_endpoint_sessions_issued", addr[r.backend], CLUSTER)] += 1
        want[("tether_endpoint_live_bindings", addr[r.backend], None)] += 1
        assert c.request("/", cookie=None).backend == r.backend
        want[("tether_endpoint_hits", addr[r.backend], CLUSTER)] += 1
    settle(s, want)


def test_endpoint_tags_hold_the_exact_address(make_stack):
    """The exposition line itself, as a user's Prometheus reads it."""
    s = make_stack()
    c = s.client()
    r = c.request("/")
    c.request("/")
    address = s.backend(r.backend).address
    p = harness.PROM_PREFIX
    line = re.compile(rf'^{p}tether_endpoint_hits\{{cluster="{CLUSTER}",endpoint="{re.escape(address)}"\}} 1$',
                      re.M)
    wait_until(lambda: line.search(exposition(s)), 6.0, interval=0.1,
               what=f"{p}tether_endpoint_hits for {address}")
    body = exposition(s)
    assert re.search(rf"^# TYPE {p}tether_endpoint_hits counter$", body, re.M)
    # No stat name was left unsplit (an endpoint in a metric's name).
    assert not [l for l in body.splitlines() if re.match(rf"{p}tether_endpoint_\w*127_0_0_1", l)]


def test_every_bootstrap_that_loads_the_wasm_module_ships_the_same_stats_tags():
    """The tags come from the bootstrap, not the module: a shipped config without them would show
    every endpoint as a metric of its own."""
    tags = harness.yaml_load(harness.ENVOY_YAML)["stats_config"]["stats_tags"]
    assert [t["tag_name"] for t in tags] == ["cluster", "endpoint"]
    loading = []
    for path in sorted((harness.REPO / "envoy").glob("*.yaml")):
        text = path.read_text()
        if "tether.wasm" not in text:
            continue
        loading.append(path.name)
        cfg = harness.yaml_load(path)
        assert cfg.get("stats_config", {}).get("stats_tags") == tags, path.name
    assert "envoy.yaml" in loading and len(loading) >= 4, loading
