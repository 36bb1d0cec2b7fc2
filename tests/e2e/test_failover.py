"""The endpoint a session is pinned to dies: no request fails, the session is re-bound once."""
import pytest

from harness import COOKIE, pinned_client


@pytest.mark.parametrize("how", ["kill", "terminate"])
def test_dead_endpoint_session_rebinds(make_stack, how):
    s = make_stack()
    victim = "backend-2"
    survivors = sorted(n for n in s.backends if n != victim)
    victims = [pinned_client(s, victim)[0] for _ in range(3)]
    # one session on the victim uses a new connection per request (both workers see it)
    victims.append(pinned_client(s, victim, fresh=True)[0])
    bystanders = {name: pinned_client(s, name)[0] for name in survivors}
    for c in victims:
        r = c.request("/")
        assert r.backend == victim and r.header("set-cookie") == [], r

    getattr(s.backends[victim], how)()  # SIGKILL or SIGTERM
    assert not s.backends[victim].alive()

    failures = []
    rebound = {}
    for idx, c in enumerate(victims):
        old = c.jar[COOKIE]
        try:
            r = c.request("/after-death")
        except Exception as exc:  # noqa: BLE001 - a failed request is what this test counts
            failures.append((idx, "first", repr(exc)))
            continue
        if r.status != 200:
            failures.append((idx, "first", r.status, r.body[:200]))
            continue
        assert r.backend in survivors, r
        sc = r.set_cookie(COOKIE)
        assert sc is not None, f"session {idx} moved from dead {victim} to {r.backend} without a new cookie"
        assert sc.value != old
        rebound[idx] = r.backend
        for i in range(20):
            try:
                r = c.request(f"/after-death/{i}")
            except Exception as exc:  # noqa: BLE001
                failures.append((idx, i, repr(exc)))
                continue
            if r.status != 200:
                failures.append((idx, i, r.status))
                continue
            assert r.backend == rebound[idx], (
                f"session {idx} re-bound to {rebound[idx]} but request {i} went to {r.backend}")
            assert r.header("set-cookie") == [], f"session {idx} request {i}: {r.header('set-cookie')}"
    assert failures == [], f"requests failed while {victim} was dead: {failures}"

    for name, c in bystanders.items():
        for _ in range(5):
            r = c.request("/")
            assert r.status == 200 and r.backend == name and r.header("set-cookie") == [], r

    # the victim comes back: re-bound sessions stay where they are
    s.backends[victim].start()
    s.envoy.wait_health({s.backends[victim].port: True}, timeout=10)
    for idx, c in enumerate(victims):
        for _ in range(5):
            r = c.request("/back")
            assert r.status == 200, r
            assert r.backend == rebound[idx], f"session {idx} flapped back to {r.backend}"
            assert r.header("set-cookie") == [], r


def test_new_sessions_avoid_unhealthy_endpoint(make_stack):
    s = make_stack()
    victim = "backend-3"
    s.backends[victim].kill()
    try:
        s.envoy.wait_health({s.backends[victim].port: False}, timeout=10)
    except TimeoutError as exc:
        pytest.fail(f"Envoy did not notice the dead endpoint within 10 s (envoy.yaml promises about "
                    f"a second; without `no_traffic_interval` a cluster that has carried no traffic "
                    f"is health-checked every 60 s): {exc}")
    c = s.client()
    served = []
    for _ in range(12):
        r = c.request("/", cookie=None, update_jar=False)
        assert r.status == 200, r
        assert r.set_cookie(COOKIE) is not None
        served.append(r.backend)
    assert victim not in served, served
    assert set(served) == set(n for n in s.backends if n != victim), served
