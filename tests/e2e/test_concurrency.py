"""Stickiness under load: 2 worker threads, 3 backends, many concurrent clients."""
import collections
import threading
import time

from harness import COOKIE, envoy_problems

REQUESTS = 50


def worker_connections(stack) -> dict[str, int]:
    stats = stack.envoy.stats(r"worker_\d+\.downstream_cx_total")
    prefix = f"listener.127.0.0.1_{stack.port}."
    return {k[len(prefix):].split(".")[0]: v for k, v in stats.items() if k.startswith(prefix)}


def warm_pools(stack, clients: int = 36, requests: int = 4):
    """Concurrent cookieless traffic first, so Envoy's upstream pools hold enough connections.

    The demo backend listens with Python's default backlog of 5: a burst of new upstream
    connections overflows it, and a connection that times out (connect_timeout 0.25 s) is
    retried on another endpoint and re-binds the session -- a real failover, but not what the
    stickiness test is about. Results here are not checked.
    """
    def run():
        c = stack.client(fresh=True)
        for _ in range(requests):
            try:
                c.request("/warm", cookie=None, update_jar=False)
            except Exception:  # noqa: BLE001 - warm-up only
                pass

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


def run_clients(stack, modes: list[bool], requests: int = REQUESTS, timeout: float = 60.0,
                ramp: float = 0.015):
    """One thread per client (mode True: a new TCP connection per request). Returns records.

    Client i starts `i * ramp` s after the others are ready (all run concurrently for most of
    the run; the ramp only spreads the creation of upstream connections).
    """
    records = [dict(fresh=fresh, backends=[], set_cookie_at=[], errors=[], values=set())
               for fresh in modes]
    barrier = threading.Barrier(len(modes))
    deadline = time.monotonic() + timeout

    def run(idx):
        rec = records[idx]
        c = stack.client(fresh=rec["fresh"])
        try:
            barrier.wait(timeout=10)
            time.sleep(idx * ramp)
            for i in range(requests):
                if time.monotonic() > deadline:
                    rec["errors"].append((i, "deadline"))
                    break
                try:
                    r = c.request(f"/client/{idx}/{i}")
                except Exception as exc:  # noqa: BLE001 - counted
                    rec["errors"].append((i, repr(exc)))
                    continue
                if r.status != 200:
                    rec["errors"].append((i, r.status, r.body[:120], r.header("set-cookie")))
                    continue
                rec["backends"].append(r.backend)
                if r.header("set-cookie"):
                    rec["set_cookie_at"].append(i)
                if COOKIE in c.jar:
                    rec["values"].add(c.jar[COOKIE])
        except Exception as exc:  # noqa: BLE001
            rec["errors"].append(("thread", repr(exc)))
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(modes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.1, deadline - time.monotonic() + 5))
    assert not any(t.is_alive() for t in threads), "client threads did not finish in time"
    return records


UPSTREAM_STATS = r"cluster\.app\.(upstream_cx_connect_timeout|upstream_cx_connect_fail|upstream_rq_retry|upstream_rq_retry_overflow|upstream_cx_total|upstream_rq_503)$"


def upstream_stats(stack) -> dict[str, int]:
    return {k.split(".")[-1]: v for k, v in stack.envoy.stats(UPSTREAM_STATS).items()}


def check_sticky(stack, records, requests: int = REQUESTS, before=None):
    if before is not None:
        after = upstream_stats(stack)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        print("upstream stats during the run:", delta)
    errors = [(i, r["errors"][:5]) for i, r in enumerate(records) if r["errors"]]
    assert errors == [], f"{len(errors)} clients had failed requests: {errors[:10]}"
    moved = [dict(client=i, fresh=r["fresh"], served=dict(collections.Counter(r["backends"])),
                  sequence="".join(b[-1] for b in r["backends"]), set_cookie_at=r["set_cookie_at"])
             for i, r in enumerate(records) if len(set(r["backends"])) != 1]
    assert moved == [], f"{len(moved)} clients were served by several endpoints: {moved[:10]}"
    reissued = [(i, r["set_cookie_at"]) for i, r in enumerate(records) if r["set_cookie_at"] != [0]]
    assert reissued == [], f"Set-Cookie other than on the first response: {reissued[:10]}"
    assert all(len(r["backends"]) == requests for r in records)
    values = [next(iter(r["values"])) for r in records]
    assert len(set(values)) == len(values), "two clients got the same session value"
    first = collections.Counter(r["backends"][0] for r in records)
    assert set(first) == set(stack.backends) and min(first.values()) >= 3, (
        f"new sessions not spread over all endpoints: {dict(first)}")


def test_sticky_under_load_mixed_connections(env):
    warm_pools(env)
    before = worker_connections(env)
    stats = upstream_stats(env)
    modes = [False] * 24 + [True] * 12  # keep-alive clients and new-connection-per-request clients
    records = run_clients(env, modes)
    check_sticky(env, records, before=stats)
    after = worker_connections(env)
    served = {w: after.get(w, 0) - before.get(w, 0) for w in after}
    assert len(served) == 2 and min(served.values()) > 0, f"connections per worker: {served}"


def test_sticky_with_new_connection_every_request(env):
    warm_pools(env)
    before = worker_connections(env)
    stats = upstream_stats(env)
    records = run_clients(env, [True] * 30)
    check_sticky(env, records, before=stats)
    after = worker_connections(env)
    served = {w: after.get(w, 0) - before.get(w, 0) for w in after}
    total = sum(served.values())
    # both workers served a real share, so sessions were created on one and used on the other
    assert len(served) == 2 and min(served.values()) >= 0.1 * total, f"connections per worker: {served}"


def test_zz_envoy_still_ready(env):
    assert envoy_problems(env) == []
