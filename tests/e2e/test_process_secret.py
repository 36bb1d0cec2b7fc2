"""Without `keys`, every worker of one Envoy seals with the same per-Envoy secret (issue #12,
defect 8): it is created race-free in shared data, so on a fresh Envoy with many workers, a
token one worker issued opens on every other.

Before: two workers that both found no key wrote their own (shared-data writes are
last-writer-wins), and the tokens of one were unknown to the other.
"""
import threading

from harness import COOKIE, Client

WORKERS = 8
STARTS = 4
SESSIONS = 24
CHECKS = 6


def new_sessions(port: int) -> list[tuple[str, str]]:
    """SESSIONS new sessions at once, each on its own connection (so on many workers)."""
    out: list[tuple[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(SESSIONS, timeout=20)

    def one():
        c = Client(port, fresh=True)
        barrier.wait()
        r = c.request("/")
        if r.status == 200 and COOKIE in c.jar:
            with lock:
                out.append((c.jar[COOKIE], r.backend))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(SESSIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_every_worker_opens_every_others_tokens(make_stack):
    s = make_stack(concurrency=WORKERS)
    unknown = []
    for start in range(STARTS):
        if start:
            s.envoy.restart()
        sessions = new_sessions(s.port)
        assert len(sessions) == SESSIONS, f"start {start}: {len(sessions)} sessions issued"
        # Each token on fresh connections, which Envoy spreads over its workers.
        for token, backend in sessions:
            for _ in range(CHECKS):
                c = Client(s.port, fresh=True)
                c.jar[COOKIE] = token
                r = c.request("/")
                if r.backend != backend or r.header("set-cookie"):
                    unknown.append((start, backend, r.backend, r.header("set-cookie")[:1]))
    assert unknown == [], f"{len(unknown)} of {STARTS * SESSIONS * CHECKS} checks: a token " \
                          f"unknown on another worker: {unknown[:5]}"
    used = s.envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    assert sum(1 for v in used.values() if v > 0) >= WORKERS // 2, used
