"""Cookie hygiene (type cookie): tether's cookie stays between client and tether, and Set-Cookie is rare."""
import re
import time

import pytest

from harness import COOKIE, pinned_client


@pytest.fixture(scope="module")
def stacks(module_stacks):
    made = {}

    def get(name, config):
        if name not in made:
            made[name] = module_stacks(config)
        return made[name]

    return get


@pytest.fixture(scope="module")
def plain(stacks):
    return stacks("no-idle", {})


def echoed_cookie(r):
    return r.echoed_headers().get("cookie")


@pytest.mark.parametrize("layout", ["middle", "first", "last", "no-spaces"])
def test_tether_cookie_removed_others_untouched(plain, layout):
    c, first = pinned_client(plain, "backend-2")
    tok = f"{COOKIE}={c.jar[COOKIE]}"
    others = ["a=1", "tether2=keep", "xtether=keep-too", "b=two=2"]
    if layout == "middle":
        sent, want = f"{others[0]}; {others[1]}; {tok}; {others[2]}; {others[3]}", "; ".join(others)
    elif layout == "first":
        sent, want = "; ".join([tok] + others), "; ".join(others)
    elif layout == "last":
        sent, want = "; ".join(others + [tok]), "; ".join(others)
    else:
        sent, want = ";".join([others[0], tok, others[1]]), None
    r = c.request("/", cookie=sent)
    assert r.status == 200 and r.backend == "backend-2", r
    seen = echoed_cookie(r)
    assert seen is not None and len(seen) == 1, f"backend saw cookie headers {seen!r}"
    assert COOKIE + "=" not in re.sub(r"\b(tether2|xtether)=", "", seen[0]), \
        f"tether's cookie reached the backend: {seen[0]!r}"
    if want is not None:
        assert seen[0] == want, f"sent {sent!r}; backend saw {seen[0]!r}, want {want!r}"
    else:
        pairs = [p.strip() for p in seen[0].split(";")]
        assert pairs == [others[0], others[1]], f"sent {sent!r}; backend saw {seen[0]!r}"
    assert r.header("set-cookie") == [], r


def test_only_tether_cookie_leaves_no_cookie_header(plain):
    c, _ = pinned_client(plain, "backend-1")
    r = c.request("/")
    assert r.status == 200 and r.backend == "backend-1"
    assert echoed_cookie(r) is None, f"backend saw {echoed_cookie(r)!r} though the client sent only tether's cookie"


def test_unknown_tether_cookie_also_removed(plain):
    r = plain.client().request("/", cookie=f"a=1; {COOKIE}=not-a-token; b=2")
    assert r.status == 200
    assert echoed_cookie(r) == ["a=1; b=2"], echoed_cookie(r)
    assert r.set_cookie(COOKIE) is not None, r


def test_cookies_without_tether_reach_backend_untouched(plain):
    sent = "a=1; tether2=x; b=2;c=3"
    r = plain.client().request("/", cookie=sent)
    assert r.status == 200
    assert echoed_cookie(r) == [sent], echoed_cookie(r)


@pytest.mark.parametrize("idle", [None, "1h"], ids=["no-idle", "idle-1h"])
def test_no_set_cookie_on_pinned_requests(stacks, idle):
    s = stacks(f"idle-{idle}", {} if idle is None else {"idle_timeout": idle})
    c = s.client()
    first = c.request("/")
    assert first.set_cookie(COOKIE) is not None
    set_cookies = []
    for i in range(30):
        r = (c if i % 2 else s.client(fresh=True)).request(f"/p/{i}", cookie=f"{COOKIE}={c.jar[COOKIE]}")
        assert r.status == 200 and r.backend == first.backend, r
        set_cookies += r.header("set-cookie")
    assert set_cookies == [], f"{len(set_cookies)} Set-Cookie on 30 pinned requests: {set_cookies[:3]}"


def test_idle_refresh_is_rate_limited(make_stack):
    s = make_stack({"idle_timeout": "2s", "absolute_timeout": "1h"})
    c = s.client()
    first = c.request("/")
    assert first.set_cookie(COOKIE) is not None
    backend = first.backend
    t0 = time.monotonic()
    refreshes, n = [], 0
    while time.monotonic() - t0 < 3.0 and n < 20:
        time.sleep(0.2)
        r = c.request("/")  # the jar keeps whatever tether last set
        n += 1
        assert r.status == 200 and r.backend == backend, (n, r)
        sc = r.set_cookie(COOKIE)
        if sc is not None:
            refreshes.append(time.monotonic() - t0)
    gaps = [round(b - a, 2) for a, b in zip([0.0] + refreshes, refreshes)]
    print(f"\nidle 2s: {n} requests in {time.monotonic() - t0:.1f}s, {len(refreshes)} refreshes at "
          f"{[round(x, 2) for x in refreshes]} (gaps {gaps})")
    assert n >= 12, n
    assert len(refreshes) >= 2, f"no idle refreshes in 3 s of use with idle_timeout 2s: {refreshes}"
    assert len(refreshes) <= n // 2, f"{len(refreshes)} refreshes for {n} requests: {refreshes}"
    assert min(gaps) >= 0.4, f"refreshes closer than a quarter of the idle timeout: gaps {gaps}"
    logged = len(re.findall(r"decision=hit \S+ refreshed=true", s.envoy.log()))
    assert logged == len(refreshes), f"log says {logged} refreshes, client saw {len(refreshes)}"
