"""Issue #5, item 3: backends killed and restarted again and again under steady load.

The shipped envoy/envoy.yaml and plugin configuration (cookie sessions; health checks every
0.5 s, outlier detection, retries on connect-failure/reset/refused-stream). Many sessions (one
cookie jar and keep-alive connection each) are driven by a pool of client threads, plus a
trickle of new sessions; meanwhile the backends are killed (SIGKILL or SIGTERM, in turn),
left dead a while, and started again on the same port, one after the other, many times.

Every response is recorded with its start and end time, and each session's history is judged
against the kill windows (kill .. the backend answering again):
- no request fails (any status but 200, or no answer);
- a session moves only away from a backend that was dead at that moment (a justified re-bind),
  carrying a new cookie; once per kill of its endpoint (its responses in a window read X* Y+),
  and it stays on its new endpoint afterwards (also when the old one comes back);
- sessions on the other backends never move;
- nothing is answered by a backend while it is dead.

`make test` runs a short campaign; `make soak` (TETHER_SOAK=1) a long one. The figures go to
RELIABILITY.md through tests/e2e/reliability.py.
"""
import collections
import random
import threading
import time
from dataclasses import dataclass, field

import reliability
from harness import COOKIE, envoy_problems

SOAK = reliability.soak()
SESSIONS = 300 if SOAK else 60
THREADS = 24 if SOAK else 12
KILLS = 45 if SOAK else 6
DOWN_S = 1.5 if SOAK else 1.0    # how long a killed backend stays dead
GAP_S = 1.5 if SOAK else 0.8     # between a backend being healthy again and the next kill
NEW_EVERY = 25                   # each thread starts a new session every NEW_EVERY requests
SLACK_S = 0.3                    # a response read just after the kill may have been served before it
TIME_LIMIT_S = 600 if SOAK else 60


@dataclass
class Kill:
    backend: str
    how: str
    at: float
    up: float = float("inf")  # the restarted process answered /healthz
    healthy: float = float("inf")  # Envoy's health check saw it again


@dataclass
class Rec:
    start: float
    end: float
    status: int | None
    backend: str | None
    set_cookie: bool
    error: str | None = None


@dataclass
class Session:
    idx: int
    client: object
    records: list = field(default_factory=list)


def chaos(stack, kills: list, stop: threading.Event, errors: list):
    """Kill and restart the backends in turn, KILLS times; SIGKILL and SIGTERM alternate."""
    names = sorted(stack.backends)
    try:
        for k in range(KILLS):
            if stop.is_set():
                return
            name = names[k % len(names)]
            b = stack.backends[name]
            how = "SIGKILL" if k % 2 == 0 else "SIGTERM"
            kill = Kill(name, how, time.monotonic())
            (b.kill if how == "SIGKILL" else b.terminate)()
            kills.append(kill)
            stop.wait(DOWN_S)
            b.start(timeout=10)
            kill.up = time.monotonic()
            stack.envoy.wait_health({b.port: True}, timeout=10)
            kill.healthy = time.monotonic()
            stop.wait(GAP_S)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(f"chaos: {exc!r}")


def drive(stack, sessions: list, stop: threading.Event, deadline: float, new_sessions: list,
          lock: threading.Lock):
    """One client thread: its sessions in turn, one request each, until stopped."""
    n = 0
    while not stop.is_set() and time.monotonic() < deadline:
        for s in sessions:
            if stop.is_set():
                return
            n += 1
            start = time.monotonic()
            try:
                r = s.client.request(f"/s/{s.idx}/{n}")
                rec = Rec(start, time.monotonic(), r.status, r.backend, bool(r.header("set-cookie")))
            except Exception as exc:  # noqa: BLE001 - a failed request is what this test counts
                rec = Rec(start, time.monotonic(), None, None, False, repr(exc))
            s.records.append(rec)
            if n % NEW_EVERY == 0:
                c = stack.client()
                start = time.monotonic()
                try:
                    r = c.request("/new", cookie=None, update_jar=False)
                    ok = r.status == 200 and r.set_cookie(COOKIE) is not None
                    rec = Rec(start, time.monotonic(), r.status, r.backend, ok,
                              None if ok else f"new session: {r!r}")
                except Exception as exc:  # noqa: BLE001
                    rec = Rec(start, time.monotonic(), None, None, False, repr(exc))
                finally:
                    c.close()
                with lock:
                    new_sessions.append(rec)


def judge(sessions, kills):
    """Counts of everything the module docstring promises, from the recorded histories."""
    out = collections.Counter()
    problems = []
    rebinds_per_kill = collections.Counter()
    for s in sessions:
        recs = sorted(s.records, key=lambda r: r.start)
        current = None
        moved_in = {}  # kill index -> endpoint it moved to
        for r in recs:
            out["requests"] += 1
            if r.status != 200:
                out["failed"] += 1
                if len(problems) < 20:
                    problems.append(f"session {s.idx}: failed {r.status} {r.error}")
                continue
            # answered by a backend while it was dead?
            for k in kills:
                if r.backend == k.backend and r.start > k.at + SLACK_S and r.end < k.up:
                    out["served_by_dead"] += 1
                    problems.append(f"session {s.idx}: {k.backend} answered while dead")
            if current is None:
                current = r.backend
                out["sessions"] += 1
                continue
            if r.backend == current:
                if r.set_cookie:
                    out["refresh_cookies"] += 1  # idle refresh (every 60 s at most)
                continue
            # a move: justified only by a window of the endpoint it leaves
            window = [i for i, k in enumerate(kills)
                      if k.backend == current and k.at - SLACK_S <= r.end and r.start <= k.up + SLACK_S]
            if not window:
                out["unjustified_moves"] += 1
                problems.append(f"session {s.idx}: moved {current} -> {r.backend} with no kill of {current}")
            else:
                i = window[-1]
                if i in moved_in:
                    out["second_rebinds"] += 1
                    problems.append(f"session {s.idx}: moved twice in kill {i}'s window")
                moved_in[i] = r.backend
                rebinds_per_kill[i] += 1
                out["rebinds"] += 1
            if not r.set_cookie:
                out["moves_without_cookie"] += 1
                problems.append(f"session {s.idx}: moved {current} -> {r.backend} without a new cookie")
            current = r.backend
        # affected sessions that did not move: pinned to X, sent a request that started and ended
        # while X was dead, and were answered by X (caught above) -- or moved (counted).
    # per kill: the sessions that were NOT on the victim when it died must not move in its window
    for k in kills:
        for s in sessions:
            ok200 = [r for r in sorted(s.records, key=lambda r: r.start) if r.status == 200]
            before = [r for r in ok200 if r.end <= k.at]
            if not before or before[-1].backend == k.backend:
                continue
            out["unaffected_pairs"] += 1
            during = [r for r in ok200 if k.at < r.end and r.start <= k.up + SLACK_S]
            if any(r.backend != before[-1].backend for r in during):
                out["unaffected_moved"] += 1
                problems.append(f"session {s.idx} on {before[-1].backend} moved while {k.backend} was dead")
    out["sessions_moved"] = sum(1 for s in sessions if len({r.backend for r in s.records if r.status == 200}) > 1)
    return out, problems, rebinds_per_kill


def upstream_stats(stack):
    names = ("upstream_rq_retry", "upstream_rq_retry_overflow", "upstream_cx_connect_fail",
             "upstream_rq_retry_success", "upstream_cx_destroy_remote_with_active_rq")
    stats = stack.envoy.stats(r"^cluster\.app\.(" + "|".join(names) + ")$")
    return {k.rsplit(".", 1)[-1]: v for k, v in stats.items()}


def test_backends_killed_and_restarted_under_load(make_stack):
    stack = make_stack()
    t0 = time.monotonic()
    deadline = t0 + TIME_LIMIT_S
    # the sessions, spread over the backends by round robin
    sessions = []
    for i in range(SESSIONS):
        c = stack.client()
        r = c.request(f"/s/{i}/0")
        assert r.status == 200 and COOKIE in c.jar, r
        s = Session(i, c)
        s.records.append(Rec(time.monotonic(), time.monotonic(), r.status, r.backend, True))
        sessions.append(s)
    per_backend = collections.Counter(s.records[0].backend for s in sessions)
    assert len(per_backend) == len(stack.backends), per_backend
    before = upstream_stats(stack)

    stop = threading.Event()
    kills, errors, new_sessions, lock = [], [], [], threading.Lock()
    groups = [sessions[t::THREADS] for t in range(THREADS)]
    drivers = [threading.Thread(target=drive, args=(stack, g, stop, deadline, new_sessions, lock),
                                daemon=True) for g in groups]
    for t in drivers:
        t.start()
    time.sleep(1.0)  # steady load first
    monkey = threading.Thread(target=chaos, args=(stack, kills, stop, errors), daemon=True)
    monkey.start()
    monkey.join(timeout=max(1.0, deadline - time.monotonic()))
    time.sleep(1.0)  # steady load after the last restart
    stop.set()
    for t in drivers:
        t.join(timeout=30)
    for s in sessions:
        s.client.close()
    assert not monkey.is_alive() and not any(t.is_alive() for t in drivers), "threads did not finish"
    elapsed = time.monotonic() - t0
    after = upstream_stats(stack)
    stats = {k: after.get(k, 0) - before.get(k, 0) for k in after}

    counts, problems, rebinds_per_kill = judge(sessions, kills)
    new_failed = sum(1 for r in new_sessions if r.error or r.status != 200)
    failed = counts["failed"] + new_failed
    affected = counts["rebinds"]
    per_kill = [rebinds_per_kill.get(i, 0) for i in range(len(kills))]
    requests = counts["requests"] + len(new_sessions)
    figures = (
        f"{requests} requests ({requests / elapsed:.0f}/s) from {SESSIONS} sessions on {THREADS} threads "
        f"+ {len(new_sessions)} new sessions; {len(kills)} kills ({sum(k.how == 'SIGKILL' for k in kills)} "
        f"SIGKILL, {sum(k.how == 'SIGTERM' for k in kills)} SIGTERM), {DOWN_S} s dead each; "
        f"failed requests: {failed}; re-binds: {affected} (per kill: {per_kill}), each a new cookie "
        f"({counts['moves_without_cookie']} without); second re-binds in one window: "
        f"{counts['second_rebinds']}; moves with no kill of their endpoint: {counts['unjustified_moves']}; "
        f"sessions on another backend during a kill: {counts['unaffected_pairs']} (session, kill) pairs, "
        f"{counts['unaffected_moved']} moved; answered by a dead backend: {counts['served_by_dead']}; "
        f"Envoy: {stats.get('upstream_rq_retry', 0)} retries, {stats.get('upstream_rq_retry_overflow', 0)} "
        f"retry overflows, {stats.get('upstream_cx_connect_fail', 0)} connect failures")
    print("\n" + figures)
    ok = (not errors and failed == 0 and not problems and len(kills) == KILLS
          and affected >= len(kills))
    reliability.record(
        "faults-soak" if SOAK else "faults", item="3",
        tried=(f"shipped config; steady load from {SESSIONS} cookie sessions and new ones while the 3 "
               f"backends are killed and restarted in turn, {KILLS} times"),
        figures=figures, ok=ok, seconds=elapsed,
        data={"counts": dict(counts), "per_kill": per_kill, "envoy": stats, "new_failed": new_failed,
              "kills": [(k.backend, k.how, round(k.up - k.at, 2), round(k.healthy - k.at, 2)) for k in kills]})
    assert errors == [], errors
    assert len(kills) == KILLS, f"only {len(kills)} of {KILLS} kills done in time"
    assert failed == 0, f"{failed} failed requests: {problems[:10]} {[r for r in new_sessions if r.error][:5]}"
    assert problems == [], problems[:20]
    # every kill hit sessions (the load reaches every backend), and each moved once
    assert all(n > 0 for n in per_kill), f"a kill re-bound no session: {per_kill}"
    assert envoy_problems(stack) == []
