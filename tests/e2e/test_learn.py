"""`type: learn`: tether binds an id the application (cookie) or the client (header, query) already has."""
import re
import urllib.parse

import pytest

APP_COOKIE = "JSESSIONID"
ID_HEADER = "x-session-id"
ID_QUERY = "sid"

CONFIGS = {
    "cookie": {"type": "learn", "learn_from": "cookie", "session_name": APP_COOKIE},
    "header": {"type": "learn", "learn_from": "header", "session_name": ID_HEADER},
    "query": {"type": "learn", "learn_from": "query", "session_name": ID_QUERY},
}


@pytest.fixture(scope="module")
def stacks(module_stacks):
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = module_stacks(CONFIGS[kind])
        return made[kind]

    return get


def count(stack, pattern):
    return len(re.findall(pattern, stack.envoy.log()))


def assert_round_robin(picks, names):
    n = len(names)
    for i in range(len(picks) - n + 1):
        assert set(picks[i:i + n]) == set(names), f"not round robin: {picks}"


def send_id(client, kind, sid, path="/"):
    """One request carrying learned id `sid` the way `kind` expects it."""
    if kind == "header":
        return client.request(path, cookie=None, headers=[(ID_HEADER, sid)])
    if kind == "query":
        sep = "&" if "?" in path else "?"
        return client.request(f"{path}{sep}{ID_QUERY}={urllib.parse.quote(sid)}", cookie=None)
    return client.request(path, cookie=f"{APP_COOKIE}={sid}")


# ------------------------------------------------------------------------------------------
# learn_from: cookie (the backend's JSESSIONID)


def login(client):
    """The backend starts an application session: (id, backend)."""
    r = client.request("/login", cookie=None, update_jar=False)
    assert r.status == 200, r
    mine = [c for c in r.set_cookies if c.name == APP_COOKIE]
    assert len(mine) == 1, \
        f"/login: expected exactly the backend's {APP_COOKIE} Set-Cookie, got {r.header('set-cookie')}"
    sc = mine[0]
    assert sc.value.endswith("." + r.backend) and sc.attrs == {"path": "/"}, (sc.raw, r.backend)
    return sc.value, r.backend


def app_set_cookies(r):
    """Set-Cookie headers of the response that name the application's cookie."""
    return [c.raw for c in r.set_cookies if c.name == APP_COOKIE]


def test_cookie_app_session_pins_to_issuing_endpoint(stacks):
    s = stacks("cookie")
    c = s.client()
    logins = [login(c) for _ in range(6)]
    assert set(b for _, b in logins) == set(s.backends), f"logins not balanced: {logins}"
    for sid, backend in logins:
        for fresh in (False, True):
            other = s.client(fresh=fresh)
            for i in range(5):
                r = other.request(f"/cart/{i}", cookie=f"{APP_COOKIE}={sid}")
                assert r.status == 200, r
                assert r.backend == backend, f"{APP_COOKIE}={sid} issued by {backend} went to {r.backend}"
                assert app_set_cookies(r) == [], f"tether set the application's cookie: {r.header('set-cookie')}"
                assert r.echoed_headers().get("cookie") == [f"{APP_COOKIE}={sid}"], r.echoed_headers()


def test_cookie_passes_through_unchanged_with_others(stacks):
    s = stacks("cookie")
    sid, backend = login(s.client())
    header = f"a=1; {APP_COOKIE}={sid}; b=two"
    r = s.client().request("/", cookie=header)
    assert r.status == 200 and r.backend == backend, r
    assert r.echoed_headers().get("cookie") == [header], r.echoed_headers()
    assert app_set_cookies(r) == [], r.header("set-cookie")


def test_cookie_requests_without_app_session_are_balanced_and_create_nothing(stacks):
    s = stacks("cookie")
    c = s.client()
    before = count(s, r"decision=new")
    picks = []
    for _ in range(9):
        r = c.request("/", cookie="other=1")
        assert r.status == 200 and r.header("set-cookie") == [], r
        assert r.echoed_headers().get("cookie") == ["other=1"], r.echoed_headers()
        picks.append(r.backend)
    assert_round_robin(picks, sorted(s.backends))
    assert count(s, r"decision=new") == before, "requests without an application session created sessions"


def test_cookie_new_app_session_on_pinned_endpoint_is_learned(stacks):
    s = stacks("cookie")
    sid, backend = login(s.client())
    c = s.client()
    r = c.request("/login", cookie=f"{APP_COOKIE}={sid}", update_jar=False)  # the app renews its id
    assert r.status == 200 and r.backend == backend, r
    (sc,) = [c for c in r.set_cookies if c.name == APP_COOKIE]
    assert sc.value != sid and sc.value.endswith("." + backend), sc.raw
    for _ in range(5):
        r = s.client(fresh=True).request("/", cookie=f"{APP_COOKIE}={sc.value}")
        assert r.status == 200 and r.backend == backend, r


# ------------------------------------------------------------------------------------------
# learn_from: header / query (an id the client chose)


@pytest.mark.parametrize("kind", ["header", "query"])
def test_client_ids_bound_on_first_sight_spread_and_pinned(stacks, kind):
    s = stacks(kind)
    first = s.client()  # one connection: one worker's round robin
    ids = [f"{kind}-user-{i:02d}-{'x' * (i % 5)}" for i in range(24)]
    bound = {}
    for sid in ids:
        r = send_id(first, kind, sid)
        assert r.status == 200, r
        assert r.header("set-cookie") == [], r
        bound[sid] = r.backend
    picks = [bound[sid] for sid in ids]
    assert_round_robin(picks, sorted(s.backends))
    keep = s.client()
    fresh = s.client(fresh=True)
    moved = []
    for sid in ids:
        for i in range(10):
            c = fresh if i % 2 else keep
            path = f"/page/{i}?a=1" if kind == "query" else f"/page/{i}"
            r = send_id(c, kind, sid, path)
            assert r.status == 200, r
            if r.backend != bound[sid]:
                moved.append((sid, i, bound[sid], r.backend))
    assert moved == [], f"learned ids left their endpoint: {moved[:10]} ({len(moved)} in all)"


@pytest.mark.parametrize("kind", ["header", "query"])
def test_requests_without_id_are_balanced_and_create_nothing(stacks, kind):
    s = stacks(kind)
    c = s.client()
    before = count(s, r"decision=new")
    picks = []
    for i in range(9):
        path = f"/?other{ID_QUERY}=x&{ID_QUERY}x=y" if kind == "query" else "/"
        r = c.request(path, cookie=None, headers=[("x-session", "nope")])
        assert r.status == 200 and r.header("set-cookie") == [], r
        picks.append(r.backend)
    assert_round_robin(picks, sorted(s.backends))
    assert count(s, r"decision=new") == before, "requests without an id created sessions"


def test_query_id_found_among_other_parameters(stacks):
    s = stacks("query")
    c = s.client()
    r = c.request(f"/?{ID_QUERY}=among-others", cookie=None)
    backend = r.backend
    for path in (f"/a?x=1&{ID_QUERY}=among-others", f"/b?{ID_QUERY}=among-others&y=2",
                 f"/c?x=1&{ID_QUERY}=among-others&y=2", f"/d?{ID_QUERY}x=1&{ID_QUERY}=among-others"):
        for _ in range(3):
            r = s.client(fresh=True).request(path, cookie=None)
            assert r.status == 200 and r.backend == backend, (path, r)


# ------------------------------------------------------------------------------------------
# the learned id's endpoint dies


@pytest.mark.parametrize("kind", ["header", "cookie"])
def test_learned_id_rebinds_when_endpoint_dies(make_stack, kind):
    s = make_stack(CONFIGS[kind])
    victim = "backend-2"
    c = s.client()
    on = {}
    for i in range(9):
        if kind == "cookie":
            sid, backend = login(c)
        else:
            sid = f"victim-test-{i}"
            backend = send_id(c, kind, sid).backend
        on.setdefault(backend, []).append(sid)
    assert len(on.get(victim, [])) >= 2, on
    s.backends[victim].kill()
    failures, rebound = [], {}
    for sid in on[victim]:
        c = s.client()
        for i in range(10):
            try:
                r = send_id(c, kind, sid, f"/after/{i}")
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append((sid, i, repr(exc)))
                continue
            if r.status != 200:
                failures.append((sid, i, r.status))
                continue
            assert r.backend != victim
            rebound.setdefault(sid, r.backend)
            assert r.backend == rebound[sid], f"{sid} re-bound to {rebound[sid]}, then went to {r.backend}"
    assert failures == [], f"requests failed while {victim} was dead: {failures}"
    assert count(s, r"decision=rebind") >= len(on[victim]), \
        "\n".join([l for l in s.envoy.log().splitlines() if "decision=" in l][-20:])
    # from another worker too, and the ids of the other endpoints never moved
    for sid, backend in rebound.items():
        r = send_id(s.client(fresh=True), kind, sid)
        assert r.status == 200 and r.backend == backend, r
    for backend, sids in on.items():
        if backend == victim:
            continue
        for sid in sids:
            r = send_id(s.client(fresh=True), kind, sid)
            assert r.status == 200 and r.backend == backend, r
