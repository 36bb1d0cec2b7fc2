"""Issue #5, item 6: with `keys` configured, sessions survive restarts of the Envoy process.

One Envoy (envoy/envoy.yaml, `keys` set) serves three kinds of sessions on three routes:
cookie sessions (the default route), header sessions (`/hdr`, type header) and the
application's own sessions (`/lc`, learn_from cookie: the backend's JSESSIONID, with tether's
sealed companion cookie). Sessions are started on every backend and on both workers; then the
Envoy process is stopped and started again with the same configuration, several times (a new
process each time: new pid, new shared data, an empty binding table). After each restart every
session must reach its endpoint, on new connections, and cookie and header sessions must not be
handed a new token.

Then the keys rotate across two more restarts: [new, old] must still open every session, and
[new] alone (the old key removed) must turn every old token into a new, load-balanced session.

`learn` from a header and `source_ip` keep their bindings only in the process's table; across a
restart they reach their endpoint again through envoy/replicas.yaml's consistent hash of the id
(the first choice for an id is the same in every process): tried here with envoy/replicas.yaml.
"""
import collections
import copy
import json
import re
import time

import pytest

import harness
import reliability
from harness import COOKIE, envoy_problems
from topologies import new_key, topology, with_endpoints  # noqa: F401 - fixture

SOAK = reliability.soak()
RESTARTS = 10 if SOAK else 3
PER_KIND = 60 if SOAK else 24
SESSION_HEADER = "x-tether-session"
APP_COOKIE = "JSESSIONID"
COMPANION = f"tether-{APP_COOKIE}"
K_OLD, K_NEW = new_key(), new_key()


def plugin(keys):
    cfg = json.loads(harness.shipped_plugin_config())
    cfg["keys"] = keys
    cfg["routes"] = {
        "hdr": {"type": "header", "session_name": SESSION_HEADER},
        "lc": {"type": "learn", "learn_from": "cookie", "session_name": APP_COOKIE},
    }
    return cfg


def add_routes(cfg):
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    app = next(r for r in vhost["routes"] if r.get("name") == "app")
    extra = []
    for name in ("hdr", "lc"):
        route = copy.deepcopy(app)
        route["name"] = name
        route["match"] = {"prefix": f"/{name}"}
        extra.append(route)
    vhost["routes"] = extra + vhost["routes"]


class Sessions:
    """PER_KIND sessions of each kind, and where each was served first."""

    def __init__(self, stack):
        self.stack = stack
        self.cookie, self.header, self.app = [], [], []
        # one kind after the other: round robin then spreads each kind over every backend
        for i in range(PER_KIND):
            c = stack.client(fresh=i % 2 == 1)
            r = c.request("/")
            assert r.status == 200 and COOKIE in c.jar, r
            self.cookie.append((dict(c.jar), r.backend))
            c.close()
        for i in range(PER_KIND):
            r = stack.client(fresh=True).request("/hdr/")
            token = r.header(SESSION_HEADER)
            assert r.status == 200 and len(token) == 1, r
            self.header.append((token[0], r.backend))
        for i in range(PER_KIND):
            c = stack.client(fresh=True)
            r = c.request(f"/lc/?login=user{i}")
            assert r.status == 200 and APP_COOKIE in c.jar and COMPANION in c.jar, (r, c.jar)
            self.app.append((dict(c.jar), r.backend))
        for kind in (self.cookie, self.header, self.app):
            assert len({b for _, b in kind}) == len(stack.backends), kind

    def check(self, expect_pinned: bool = True):
        """Every session once, on a new connection: counters of what happened."""
        out = collections.Counter()
        problems = []
        for jar, home in self.cookie:
            c = self.stack.client(fresh=True)
            c.jar = dict(jar)
            r = c.request("/after")
            reissued = r.set_cookie(COOKIE) is not None
            out["cookie"] += 1
            if r.status != 200:
                problems.append(("cookie", r.status))
            elif r.backend == home and not reissued:
                out["cookie_kept"] += 1
            elif expect_pinned:
                problems.append(("cookie", home, r.backend, reissued))
            else:
                out["cookie_new"] += int(reissued)
        for token, home in self.header:
            r = self.stack.client(fresh=True).request("/hdr/after", headers=[(SESSION_HEADER, token)])
            reissued = bool(r.header(SESSION_HEADER))
            out["header"] += 1
            if r.status != 200:
                problems.append(("header", r.status))
            elif r.backend == home and not reissued:
                out["header_kept"] += 1
            elif expect_pinned:
                problems.append(("header", home, r.backend, reissued))
            else:
                out["header_new"] += int(reissued)
        for jar, home in self.app:
            c = self.stack.client(fresh=True)
            c.jar = dict(jar)
            r = c.request("/lc/after")
            out["app"] += 1
            if r.status != 200:
                problems.append(("app", r.status))
            elif r.backend == home:
                out["app_kept"] += 1
            elif expect_pinned:
                problems.append(("app", home, r.backend))
            else:
                out["app_moved"] += 1
        return out, problems


def restart_with(stack, keys=None):
    old_pid = stack.envoy.proc.pid
    if keys is not None:
        stack.envoy.plugin_config = plugin(keys)
    t = time.monotonic()
    stack.envoy.restart()
    assert stack.envoy.proc.pid != old_pid
    return time.monotonic() - t


def test_sessions_survive_envoy_restarts_with_keys(make_stack):
    t0 = time.monotonic()
    stack = make_stack(plugin([K_OLD]), mutate=add_routes)
    sessions = Sessions(stack)
    before, problems = sessions.check()
    assert problems == [], f"before any restart: {problems[:10]}"
    results, downtime = [], []
    for n in range(RESTARTS):
        downtime.append(restart_with(stack))
        out, problems = sessions.check()
        results.append(out)
        assert problems == [], f"after restart {n + 1}: {problems[:10]}"
    # rotation: the new key first, the old one still listed
    downtime.append(restart_with(stack, [K_NEW, K_OLD]))
    rotated, problems = sessions.check()
    assert problems == [], f"after the rotation restart: {problems[:10]}"
    # the old key removed: every old token is no session (the learned sessions' companions too)
    downtime.append(restart_with(stack, [K_NEW]))
    removed, removed_problems = sessions.check(expect_pinned=False)
    new_lines = len(re.findall(r"decision=new [^\n]*reason=unknown_session", stack.envoy.log(all_runs=False)))
    total = sum(r["cookie_kept"] + r["header_kept"] + r["app_kept"] for r in results)
    asked = sum(r["cookie"] + r["header"] + r["app"] for r in results)
    figures = (f"{3 * PER_KIND} sessions ({PER_KIND} cookie, {PER_KIND} header, {PER_KIND} learned "
               f"application cookies with a companion), {RESTARTS} restarts of the Envoy process "
               f"({min(downtime):.1f}-{max(downtime):.1f} s each): {total} of {asked} session checks "
               f"reached their endpoint with no new token; after a restart with [new, old] keys: "
               f"{rotated['cookie_kept'] + rotated['header_kept'] + rotated['app_kept']} of "
               f"{3 * PER_KIND}; after a restart with the old key removed: "
               f"{removed['cookie_kept'] + removed['header_kept']} of {2 * PER_KIND} cookie and header "
               f"sessions kept, {removed['cookie_new'] + removed['header_new']} given a new token, "
               f"{removed['app_moved']} of {PER_KIND} learned sessions load-balanced elsewhere "
               f"({new_lines} logged unknown_session)")
    print("\n" + figures)
    ok = (total == asked == RESTARTS * 3 * PER_KIND and not removed_problems
          and removed["cookie_new"] == removed["header_new"] == PER_KIND)
    reliability.record(
        "restart-keys" + ("-soak" if SOAK else ""), item="6",
        tried=(f"`keys` set; cookie, header and learn_from cookie sessions on every backend; the Envoy "
               f"process stopped and started again with the same config {RESTARTS} times, then with "
               f"[new, old] keys, then with [new] only"),
        figures=figures, ok=ok, seconds=time.monotonic() - t0,
        data={"results": [dict(r) for r in results], "rotated": dict(rotated), "removed": dict(removed)})
    assert total == asked == RESTARTS * 3 * PER_KIND
    assert removed_problems == [], removed_problems[:10]
    assert removed["cookie_new"] == PER_KIND and removed["header_new"] == PER_KIND, removed
    # Sessions of a removed key are load-balanced afresh: spread over the backends.
    assert new_lines >= 2 * PER_KIND, new_lines
    assert envoy_problems(stack) == []


def test_learned_ids_find_their_endpoint_again_through_the_consistent_hash(topology):
    """envoy/replicas.yaml (learn from x-session-id, Maglev fallback on the same id), restarted."""
    t0 = time.monotonic()
    backends = topology.add_backends(3)
    ports = [b.port for b in backends]
    envoy = topology.add_envoy("replicas.yaml", ports, build=with_endpoints({"app": ports}))
    ids = [f"user-{i:03d}" for i in range(PER_KIND * 2)]

    def where(sid):
        c = envoy.client(fresh=True)
        r = c.request("/learn", headers={"x-session-id": sid}, cookie=None)
        assert r.status == 200, r
        return r.backend

    home = {sid: where(sid) for sid in ids}
    assert len(set(home.values())) == len(backends), home
    kept, asked = 0, 0
    for _ in range(RESTARTS):
        envoy.restart()
        for sid in ids:
            asked += 1
            kept += where(sid) == home[sid]
    new_lines = sum(1 for d in envoy.decisions() if d.startswith("decision=new "))
    figures = (f"{len(ids)} learned ids through envoy/replicas.yaml, {RESTARTS} restarts: {kept} of {asked} "
               f"reached their endpoint again (each restart re-learned them: {new_lines} decision=new "
               f"for {len(ids) * (RESTARTS + 1)} first sights)")
    print("\n" + figures)
    reliability.record(
        "restart-learn-header" + ("-soak" if SOAK else ""), item="6",
        tried=("`learn` from a header (no token to carry the pin): envoy/replicas.yaml, whose first "
               f"choice is a consistent hash of the id; the Envoy process restarted {RESTARTS} times"),
        figures=figures, ok=kept == asked, seconds=time.monotonic() - t0)
    assert kept == asked, f"{asked - kept} of {asked} ids reached another endpoint after a restart"
