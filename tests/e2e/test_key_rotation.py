"""Rotating `keys` through live listener reloads keeps every session.

Envoy takes the shipped listener by LDS from a file it watches (harness.listener_by_lds), so one
Envoy process, and with it the shared data that holds the binding tables and the per-Envoy
secret, lives through every reload. One listener carries every session type: the top level's
cookie, and routes (copies of the shipped `app` route) with a header token, `learn` from a
request header, `learn` from the backend's JSESSIONID, and `source_ip`.

`keys: [K1]` becomes `[K2, K1]`: tokens sealed under K1 still open and table bindings are still
found (learned ids and addresses are hashed with a secret of the Envoy, never with a key), and
new tokens are sealed under K2. Then `[K2]`: the K2 tokens still pin, tokens sealed only under
K1 are no session, and the table bindings, which no key ever sealed, stay.

Whether tether found a session is read from its decision line for that very request
(`decision=hit` or `decision=new`), not only from which backend answered: a lost binding is
load-balanced again and may land on its old backend by chance.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

import harness
from harness import COOKIE
from topologies import new_key

HEADER_TOKEN = "x-session"
ID_HEADER = "x-sid"
APP_COOKIE = "JSESSIONID"
IP_TABLE = "client-ip"

# kind -> (Envoy route name, path prefix); the top level's cookie is served by the shipped `app`.
ROUTES = {
    "header": ("rot-header", "/h/"),
    "learn_header": ("rot-learn-header", "/lh/"),
    "learn_cookie": ("rot-learn-cookie", "/lc/"),
    "source_ip": ("rot-ip", "/ip/"),
}
PREFIX = {"cookie": "/c/", **{kind: prefix for kind, (_, prefix) in ROUTES.items()}}
KINDS = tuple(PREFIX)
TOKEN_KINDS = ("cookie", "header")

BEFORE_ROTATION = 6
AFTER_ROTATION = 3
# First client address of each era's source_ip sessions (one address a session); every other
# client connects from 127.0.0.1.
FIRST_ADDRESS = {"K1": 101, "K2": 121}

# Both the current module and older builds end a decision line this way; a line is only taken
# once its end has reached the log.
DECISION = re.compile(r"tether\[\d+\]: (decision=\S+[^\n]*? cas_retries=\d+)\n")


def add_routes(cfg: dict) -> dict:
    return harness.add_app_routes(cfg, ROUTES.values())


def plugin(keys: list[str]) -> dict:
    """The shipped plugin config with these keys, and a policy per route. The routes inherit
    `keys`; only the token types and learn's companion cookie use them."""
    cfg = json.loads(harness.shipped_plugin_config())
    cfg["keys"] = list(keys)
    cfg["routes"] = {
        ROUTES["header"][0]: {"type": "header", "session_name": HEADER_TOKEN},
        ROUTES["learn_header"][0]: {"type": "learn", "learn_from": "header",
                                    "session_name": ID_HEADER},
        ROUTES["learn_cookie"][0]: {"type": "learn", "learn_from": "cookie",
                                    "session_name": APP_COOKIE},
        ROUTES["source_ip"][0]: {"type": "source_ip", "session_name": IP_TABLE},
    }
    return cfg


@dataclass
class Session:
    kind: str
    # The token, the learned id, or the client address: what the client sends back.
    carrier: str
    backend: str
    # The first of `keys` when the session started.
    era: str

    def __str__(self):
        return f"{self.kind}/{self.era}@{self.backend}"


def decisions(envoy) -> list[str]:
    return DECISION.findall(envoy.log())


def send(stack, kind: str, carrier: str | None, tail: str, start: bool = False):
    """One request of a session of `kind` on a new connection (so after a reload it meets the
    new listener), and tether's decision for it."""
    source_ip = carrier if kind == "source_ip" else None
    client = stack.client(fresh=True, source_ip=source_ip)
    path = PREFIX[kind] + tail
    cookie, headers = None, []
    if kind == "cookie" and carrier is not None:
        cookie = f"{COOKIE}={carrier}"
    elif kind == "header" and carrier is not None:
        headers = [(HEADER_TOKEN, carrier)]
    elif kind == "learn_header":
        headers = [(ID_HEADER, carrier)]
    elif kind == "learn_cookie":
        if start:
            path += f"?login={carrier}"
        else:
            # The application's cookie alone: learn's companion cookie would pin the session
            # even where the table had lost it, and this test is about the table.
            cookie = f"{APP_COOKIE}={carrier}"
    before = len(decisions(stack.envoy))
    try:
        r = client.request(path, cookie=cookie, headers=headers, update_jar=False)
    finally:
        client.close()
    new = harness.wait_until(lambda: decisions(stack.envoy)[before:], 5.0,
                             what=f"tether's decision for {path}")
    assert len(new) == 1, f"one request, {len(new)} decisions: {new}"
    return r, new[0]


def new_token(kind: str, r) -> str | None:
    """The token a response hands out (cookie and header sessions), else None."""
    if kind == "cookie":
        sc = r.set_cookie(COOKIE)
        return sc.value if sc is not None else None
    if kind == "header":
        values = r.header(HEADER_TOKEN)
        return values[0] if values else None
    return None


def start_session(stack, kind: str, era: str, n: int) -> Session:
    carrier = None
    if kind == "learn_header":
        carrier = f"sid-{era}-{n}-{secrets.token_hex(4)}"
    elif kind == "learn_cookie":
        carrier = f"u-{era}-{n}-{secrets.token_hex(4)}"
    elif kind == "source_ip":
        carrier = f"127.0.0.{FIRST_ADDRESS[era] + n}"
    r, decision = send(stack, kind, carrier, f"start/{n}", start=True)
    assert r.status == 200 and decision.startswith("decision=new "), (kind, r, decision)
    if kind in TOKEN_KINDS:
        carrier = new_token(kind, r)
        assert carrier, f"new {kind} session without a token: {r.headers}"
    elif kind == "learn_cookie":
        # The demo backend names itself in the id it issues.
        issued = r.set_cookie(APP_COOKIE)
        assert issued is not None and issued.value == f"{carrier}.{r.backend}", r
        carrier = issued.value
    return Session(kind, carrier, r.backend, era)


def pinned(stack, s: Session, tail: str) -> str | None:
    """None if the session reached its backend as a session tether found, without a new token
    (a learn-cookie hit re-seals its companion cookie: that is its normal answer); otherwise
    what happened instead."""
    r, decision = send(stack, s.kind, s.carrier, tail)
    problems = []
    if r.status != 200 or r.backend != s.backend:
        problems.append(f"served by {r.backend} (status {r.status})")
    if not decision.startswith("decision=hit "):
        problems.append(decision)
    token = new_token(s.kind, r)
    if token is not None:
        problems.append("a new token")
    if s.kind in ("learn_header", "source_ip") and r.header("set-cookie"):
        problems.append(f"Set-Cookie {r.header('set-cookie')}")
    if s.kind == "learn_cookie" and r.set_cookie(APP_COOKIE) is not None:
        problems.append(f"a new {APP_COOKIE}")
    return f"{s}: " + ", ".join(problems) if problems else None


def no_session(stack, s: Session, tail: str) -> str | None:
    """None if tether treated the session's token as no session (a new one issued)."""
    r, decision = send(stack, s.kind, s.carrier, tail)
    if r.status == 200 and decision.startswith("decision=new ") and new_token(s.kind, r):
        return None
    return f"{s}: still opened ({decision}, served by {r.backend}, status {r.status})"


def tally(sessions: list[Session], failed: dict[int, str]) -> str:
    """Per kind: how many of its sessions passed, out of how many."""
    parts = []
    for kind in KINDS:
        mine = [i for i, s in enumerate(sessions) if s.kind == kind]
        if mine:
            ok = sum(1 for i in mine if i not in failed)
            parts.append(f"{kind} {ok}/{len(mine)}")
    return ", ".join(parts)


def check(stack, sessions: list[Session], tail: str, expect) -> tuple[dict[int, str], str]:
    """`expect(stack, session, tail)` for every session: (failures by index, per-kind tally)."""
    failed = {}
    for i, s in enumerate(sessions):
        problem = expect(stack, s, f"{tail}/{i}")
        if problem is not None:
            failed[i] = problem
    return failed, tally(sessions, failed)


def listener_state(envoy) -> tuple[str | None, str | None, bool]:
    """(LDS version, the tether filter's plugin JSON in the active listener, a listener still
    warming), from /config_dump."""
    _, body = envoy.admin("/config_dump?resource=dynamic_listeners")
    dump = json.loads(body)
    (listener,) = dump["configs"]
    chain = listener["active_state"]["listener"]["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    (tether,) = [f for f in hcm["http_filters"] if f["name"] == harness.FILTER]
    value = harness.filter_plugin_json(tether)
    _, body = envoy.admin("/config_dump")
    (listeners,) = [c for c in json.loads(body)["configs"] if c["@type"].endswith("ListenersConfigDump")]
    return listeners.get("version_info"), value, "warming_state" in listener


def reload(stack, lds_file, keys: list[str], version: str):
    """Rewrites the listener file with `keys`; returns once Envoy has modified the listener in
    place and every worker serves the new one."""
    envoy = stack.envoy
    stat = "^listener_manager\\."
    before = envoy.stats(stat)
    value = json.dumps(plugin(keys))
    cfg = harness.build_config(admin_port=envoy.admin_port, listener_port=envoy.port,
                               backend_ports=envoy.backend_ports, plugin_config=value,
                               wasm_path=envoy.wasm_path, mutate=add_routes)
    harness.write_lds(lds_file, cfg["static_resources"]["listeners"], version)

    def grew(stats, name, by=1):
        return stats.get(f"listener_manager.{name}", 0) >= before.get(f"listener_manager.{name}", 0) + by

    def serving():
        stats = envoy.stats(stat)
        if grew(stats, "lds.update_rejected"):
            raise AssertionError(f"Envoy rejected the listener with keys {keys}")
        # listener_create_success counts the workers that took the new listener.
        if not (grew(stats, "listener_modified")
                and grew(stats, "listener_create_success", by=envoy.concurrency)
                and stats.get("listener_manager.total_listeners_warming") == 0):
            return False
        lds_version, active, warming = listener_state(envoy)
        return lds_version == version and active == value and not warming

    harness.wait_until(serving, 10.0, interval=0.05, what=f"listener {version} serving on every worker")


def test_rotation_through_live_reloads_keeps_every_session(make_stack, tmp_path):
    k1, k2 = new_key(), new_key()
    lds_dir = tmp_path / "lds"
    lds_dir.mkdir()
    lds_file = lds_dir / "listeners.yaml"
    stack = make_stack(plugin([k1]),
                       mutate=harness.listener_by_lds(lds_file, version="k1", then=add_routes))
    version, _, _ = listener_state(stack.envoy)
    assert version == "k1", f"the listener did not come from {lds_file}: LDS version {version!r}"

    old = [start_session(stack, kind, "K1", n) for kind in KINDS for n in range(BEFORE_ROTATION)]
    assert {s.backend for s in old} == set(stack.backends), [str(s) for s in old]
    failed, counts = check(stack, old, "before", pinned)
    assert not failed, f"sessions did not pin before any reload ({counts}): {list(failed.values())}"

    reload(stack, lds_file, [k2, k1], "k2-k1")
    failed, counts = check(stack, old, "rotated", pinned)
    assert not failed, (f"after the reload to keys [K2, K1], sessions that pinned: {counts}; "
                        f"lost: {list(failed.values())}")

    new = [start_session(stack, kind, "K2", n) for kind in KINDS for n in range(AFTER_ROTATION)]
    failed, counts = check(stack, new, "issued", pinned)
    assert not failed, f"sessions started under [K2, K1] did not pin ({counts}): {list(failed.values())}"

    reload(stack, lds_file, [k2], "k2")
    k1_tokens = [s for s in old if s.kind in TOKEN_KINDS]
    kept = new + [s for s in old if s.kind not in TOKEN_KINDS]
    failed_kept, counts_kept = check(stack, kept, "retired", pinned)
    failed_k1, counts_k1 = check(stack, k1_tokens, "retired", no_session)
    assert not failed_kept and not failed_k1, (
        f"after the reload to keys [K2]: sessions that pinned (K2 tokens, every table binding): "
        f"{counts_kept}; K1-only tokens treated as no session: {counts_k1}; "
        f"wrong: {list(failed_kept.values()) + list(failed_k1.values())}")
