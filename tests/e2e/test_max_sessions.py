"""`max_sessions` bounds the binding table: a flood of new session ids does not grow Envoy's memory.

Envoy's shared data never frees a key (about 90 bytes for every distinct key ever written), so a
table keyed by session id would grow with every new id. tether keeps a fixed set of buckets; this
test floods it with distinct learned ids, fast (raw pipelined HTTP/1.1 over a few connections),
and measures Envoy's heap (the bytes its allocator has handed out) around the flood. Resident
memory is printed too but not judged: the allocator's free pages stay resident, so it can miss
megabytes of growth.
"""
import threading
import time

from harness import Pipeline, heap_bytes, rss_kb, settled_heap

ID_HEADER = "x-session-id"
CONFIG = {"type": "learn", "learn_from": "header", "session_name": ID_HEADER, "max_sessions": 1000}
CONNECTIONS = 8
BATCH = 50          # requests written at once on a connection before reading their responses
WARMUP = 2000
FLOOD = 24000
LIMIT_BYTES_PER_SESSION = 16
ACTIVE = 20


def id_request(i) -> bytes:
    return f"GET /flood HTTP/1.1\r\nhost: tether\r\n{ID_HEADER}: {i}\r\n\r\n".encode()


def send_ids(port, ids, deadline, conns=CONNECTIONS):
    """All `ids` over `conns` pipelined connections in threads; returns status counts."""
    chunks = [ids[i::conns] for i in range(conns)]
    counts, errors, lock = {}, [], threading.Lock()

    def run(chunk):
        p = Pipeline(port)
        try:
            for i in range(0, len(chunk), BATCH):
                if time.monotonic() > deadline:
                    raise TimeoutError("flood ran out of time")
                for status, _, _ in p.batch([id_request(x) for x in chunk[i:i + BATCH]]):
                    with lock:
                        counts[status] = counts.get(status, 0) + 1
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            with lock:
                errors.append(repr(exc))
        finally:
            p.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 5))
    assert errors == [], errors
    return counts


def flood(s, label):
    """Active users, a warm-up of WARMUP new ids, then FLOOD more while the active users go on.

    Returns the figures; asserts only that every request was answered.
    """
    pid = s.envoy.proc.pid
    port = s.port
    t_start = time.monotonic()
    deadline = t_start + 45

    # active users: bound first, used all along
    active = [f"active-{i:02d}" for i in range(ACTIVE)]
    home = {}
    ac = s.client()
    for sid in active:
        r = ac.request("/", cookie=None, headers=[(ID_HEADER, sid)])
        assert r.status == 200
        home[sid] = r.backend
    assert len(set(home.values())) == 3, home

    rss0, heap0 = rss_kb(pid), heap_bytes(s.envoy)
    counts = send_ids(port, [f"warm-{n}" for n in range(WARMUP)], deadline)
    assert counts == {200: WARMUP}, counts
    # the active ids once more after the warm-up (they may have been evicted: then re-bound)
    for sid in active:
        r = ac.request("/", cookie=None, headers=[(ID_HEADER, sid)])
        assert r.status == 200
        home[sid] = r.backend
    heap1, rss1 = settled_heap(s.envoy), rss_kb(pid)

    # the flood, with the active users coming back every now and then
    stop = threading.Event()
    checks = {"pairs": 0, "kept": 0, "moved": 0, "split": [], "bad": []}

    def active_users():
        c = s.client()
        while not stop.is_set() and time.monotonic() < deadline:
            for sid in active:
                a = c.request("/", cookie=None, headers=[(ID_HEADER, sid)])
                b = c.request("/", cookie=None, headers=[(ID_HEADER, sid)])
                if a.status != 200 or b.status != 200:
                    checks["bad"].append((sid, a.status, b.status))
                    continue
                checks["pairs"] += 1
                if a.backend != b.backend:
                    checks["split"].append((sid, a.backend, b.backend))
                if a.backend == home[sid]:
                    checks["kept"] += 1
                else:
                    checks["moved"] += 1
                    home[sid] = a.backend
            stop.wait(0.2)

    user = threading.Thread(target=active_users)
    user.start()
    t0 = time.monotonic()
    try:
        counts = send_ids(port, [f"flood-{n}" for n in range(FLOOD)], deadline)
    finally:
        stop.set()
        user.join(10)
    flood_s = time.monotonic() - t0
    heap2, rss2 = settled_heap(s.envoy), rss_kb(pid)
    # the active users after the flood: always answered, and each sticks where it is now
    after = {}
    for sid in active:
        got = []
        for k in range(5):
            r = (ac if k % 2 else s.client(fresh=True)).request("/", cookie=None, headers=[(ID_HEADER, sid)])
            assert r.status == 200, (sid, r)
            got.append(r.backend)
        after[sid] = got
    per = (heap2 - heap1) / FLOOD
    print(f"\n{label}: Envoy heap {heap0 // 1024} kB at start, {heap1 // 1024} kB after {WARMUP} sessions "
          f"(+{(heap1 - heap0) / WARMUP:.0f} B/session incl. connection set-up), "
          f"{heap2 // 1024} kB after {FLOOD} more ({flood_s:.1f} s, {FLOOD / flood_s:.0f} req/s): "
          f"{(heap2 - heap1) // 1024:+d} kB = {per:.1f} B per new session (limit {LIMIT_BYTES_PER_SESSION}); "
          f"VmRSS {rss0}, {rss1}, {rss2} kB")
    print(f"{label}: active users during the flood: {checks['pairs']} pairs, {checks['kept']} on their "
          f"endpoint, {checks['moved']} re-bound (evicted), {len(checks['split'])} moved between two "
          f"back-to-back requests, {len(checks['bad'])} failed")
    assert counts == {200: FLOOD}, counts
    assert checks["bad"] == [], f"active users got errors during the flood: {checks['bad'][:5]}"
    assert checks["pairs"] >= ACTIVE, checks
    assert time.monotonic() - t_start < 60
    return {"per_session": per, "after": after, "checks": checks}


def test_flood_of_new_sessions_does_not_grow_memory(make_stack):
    s = make_stack(CONFIG)
    got = flood(s, "max_sessions 1000")
    unstable = {sid: b for sid, b in got["after"].items() if len(set(b)) != 1}
    assert unstable == {}, f"active ids not sticky after the flood: {unstable}"
    assert got["per_session"] < LIMIT_BYTES_PER_SESSION, (
        f"Envoy grew {got['per_session']:.1f} B per new session over {FLOOD} new sessions "
        f"(max_sessions 1000 should bound the table)")


def test_control_a_table_that_keeps_every_session_is_measured_growing(make_stack):
    """The same flood with max_sessions 100000 (every session kept): the measurement sees it grow.

    Without this, a figure under the limit above could mean the measurement is blind.
    """
    s = make_stack({**CONFIG, "max_sessions": 100000})
    got = flood(s, "control, max_sessions 100000")
    assert got["per_session"] > LIMIT_BYTES_PER_SESSION, (
        f"keeping {FLOOD} more sessions grew Envoy by only {got['per_session']:.1f} B each: the "
        f"memory measurement cannot tell a bounded table from an unbounded one")


def test_recently_used_binding_is_not_the_one_evicted(make_stack):
    """max_sessions 8 is one bucket of 8: the ninth id evicts the least recently used binding.

    Use is recorded at most every quarter of the idle timeout (0.5 s here), so `first` is bound,
    0.6 s pass, 7 more ids fill the bucket, and `first` is used again (its use is recorded);
    a ninth id must then push out the oldest unused binding (`filler-0`), not `first`.
    """
    s = make_stack({"type": "learn", "learn_from": "header", "session_name": ID_HEADER,
                    "max_sessions": 8, "idle_timeout": "2s"})

    def new_lines():
        return s.envoy.log().count("decision=new")

    c = s.client()

    def use(sid):
        r = c.request("/", cookie=None, headers=[(ID_HEADER, sid)])
        assert r.status == 200, r
        return r.backend

    first = use("first")
    time.sleep(0.6)
    fillers = [f"filler-{i}" for i in range(7)]
    for sid in fillers:
        use(sid)
    n, touched = new_lines(), s.envoy.log().count("refreshed=true")
    assert use("first") == first
    assert new_lines() == n, "`first` was not pinned while the table had room"
    assert s.envoy.log().count("refreshed=true") == touched + 1, "the use of `first` was not recorded"
    use("ninth")  # the table is full: one binding must go
    n = new_lines()
    assert use("first") == first
    assert new_lines() == n, ("the binding used (and recorded) just before the table overflowed was "
                              "evicted instead of the least recently used one")
    n = new_lines()
    use(fillers[0])
    assert new_lines() == n + 1, "the least recently used binding was not the one evicted"
