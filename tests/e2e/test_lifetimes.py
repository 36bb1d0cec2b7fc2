"""idle_timeout and absolute_timeout on the wall clock (about 1 s of slack allowed)."""
import time

from harness import COOKIE


def test_idle_timeout(make_stack):
    s = make_stack({"idle_timeout": "2s", "absolute_timeout": "1h"})
    c = s.client()
    first = c.request("/")
    assert first.status == 200
    value = c.jar[COOKIE]
    pinned = first.backend
    # used every 0.5 s for 3 s (longer than the idle timeout): stays pinned. The token carries
    # its last-seen time, so tether refreshes the cookie now and then (a quarter of the idle
    # timeout at the most often); the client keeps whatever it was last given.
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < 3.0 and n < 20:
        time.sleep(0.5)
        r = c.request("/")
        n += 1
        assert r.status == 200
        assert r.backend == pinned, f"after {time.monotonic() - start:.1f}s moved to {r.backend}"
    assert n >= 5
    value = c.jar[COOKIE]
    # 3 s of silence (> 2 s idle): the session is gone
    time.sleep(3.2)
    r = c.request("/")
    assert r.status == 200
    sc = r.set_cookie(COOKIE)
    assert sc is not None, "session survived 3.2 s of silence with idle_timeout 2s"
    assert sc.value != value
    # the expired value stays dead; the new one is a session
    r2 = c.request("/", cookie=f"{COOKIE}={value}", update_jar=False)
    assert r2.set_cookie(COOKIE) is not None and r2.set_cookie(COOKIE).value != value, r2
    r3 = c.request("/")
    assert r3.status == 200 and r3.backend == r.backend, r3


def test_absolute_timeout(make_stack):
    s = make_stack({"absolute_timeout": "3s", "idle_timeout": "1h"})
    c = s.client()
    first = c.request("/")
    issued_at = time.monotonic()
    assert first.status == 200
    value = c.jar[COOKIE]
    pinned = first.backend
    renewed_after = None
    while time.monotonic() - issued_at < 6.0:
        time.sleep(0.25)
        r = c.request("/")
        age = time.monotonic() - issued_at
        assert r.status == 200
        sc = r.set_cookie(COOKIE)
        if sc is not None:
            assert sc.value != value
            renewed_after = age
            break
        assert r.backend == pinned, f"at {age:.1f}s moved to {r.backend} without a new cookie"
    assert renewed_after is not None, "continuously used session never expired with absolute_timeout 3s"
    assert 2.0 <= renewed_after <= 4.5, f"absolute_timeout 3s expired the session after {renewed_after:.2f}s"
    r = c.request("/")
    assert r.status == 200 and r.header("set-cookie") == [], r


def test_permanent_cookie_max_age_matches_absolute_timeout(make_stack):
    s = make_stack({"cookie": {"lifetime_type": "permanent"}, "absolute_timeout": "90s",
                    "idle_timeout": "500ms"})
    c = s.client()
    r = c.request("/")
    sc = r.set_cookie(COOKIE)
    assert sc is not None and sc.get("max-age") == "90", r.header("set-cookie")
    # idle 500ms: a pause of 2 s ends the session
    time.sleep(2.0)
    r = c.request("/")
    assert r.set_cookie(COOKIE) is not None, "session survived 2 s of silence with idle_timeout 500ms"

