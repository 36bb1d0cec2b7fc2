"""`type: header`: the sealed token travels in a response header and comes back in a request header."""
import time

import pytest

from harness import encodings_of

NAME = "X-Tether-Session"
HEADER = NAME.lower()


@pytest.fixture(scope="module")
def hs(module_stacks):
    return module_stacks({"type": "header", "session_name": NAME})


def new_session(stack, client=None):
    """(client, token, backend) of a new header session."""
    c = client or stack.client()
    r = c.request("/", cookie=None)
    assert r.status == 200, r
    tokens = r.header(HEADER)
    assert len(tokens) == 1, f"new session: {HEADER} headers {tokens}; all headers {r.headers}"
    return c, tokens[0], r.backend


def test_new_session_gets_header_not_cookie(hs):
    c, token, backend = new_session(hs)
    r = c.request("/", cookie=None)  # a second request without the token: another new session
    assert r.header("set-cookie") == [], r.headers
    assert token and len(token) >= 16, token
    for b in hs.backends.values():
        leaked = [e for e in encodings_of(b.address) if e in token]
        assert not leaked, f"token {token!r} shows endpoint {b.address} as {leaked}"
    assert backend in hs.backends


@pytest.mark.parametrize("fresh", [False, True], ids=["keepalive", "new-connection-each"])
def test_token_header_pins_and_is_removed_before_backend(hs, fresh):
    _, token, backend = new_session(hs)
    c = hs.client(fresh=fresh)
    for i in range(20):
        r = c.request(f"/p/{i}", cookie=None, headers=[(NAME, token)])
        assert r.status == 200, r
        assert r.backend == backend, f"request {i} with the token left {backend} for {r.backend}"
        assert r.header(HEADER) == [], f"request {i}: a pinned session got a new token {r.header(HEADER)}"
        assert r.header("set-cookie") == [], r
        seen = r.echoed_headers()
        assert HEADER not in seen, f"the token header reached the backend: {seen.get(HEADER)}"


def test_sessions_round_robin_and_each_pins(hs):
    c = hs.client()
    issued = []
    for _ in range(6):
        _, token, backend = new_session(hs, c)
        issued.append((token, backend))
    assert len({t for t, _ in issued}) == 6, issued
    assert set(b for _, b in issued) == set(hs.backends), f"new sessions not balanced: {issued}"
    other = hs.client(fresh=True)
    for token, backend in issued:
        for _ in range(3):
            r = other.request("/", cookie=None, headers=[(NAME, token)])
            assert r.status == 200 and r.backend == backend and r.header(HEADER) == [], r


def _variants(token):
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    mid = len(token) // 2
    return {
        "garbage": "garbage-not-a-token",
        "empty-ish": "x",
        "flipped-char": flipped,
        "truncated": token[:-4],
        "extended": token + "AAAA",
        "mid-flip": token[:mid] + ("Z" if token[mid] != "Z" else "Y") + token[mid + 1:],
    }


@pytest.mark.parametrize("kind", ["garbage", "empty-ish", "flipped-char", "truncated", "extended", "mid-flip"])
def test_forged_or_garbage_token_is_never_adopted(hs, kind):
    _, token, backend = new_session(hs)
    bad = _variants(token)[kind]
    c = hs.client()  # one connection: one worker's round robin
    served = []
    for _ in range(6):
        r = c.request("/", cookie=None, headers=[(NAME, bad)])
        assert r.status == 200, r
        issued = r.header(HEADER)
        assert len(issued) == 1, f"{kind} token {bad!r}: no new token issued ({r.headers})"
        assert issued[0] != bad and issued[0] != token, issued
        assert HEADER not in r.echoed_headers(), "the forged token header reached the backend"
        served.append(r.backend)
    assert len(set(served)) >= 2, f"{kind} token still pinned every request to one endpoint: {served}"


def test_idle_timeout_enforced(make_stack):
    s = make_stack({"type": "header", "session_name": NAME, "idle_timeout": "1s"})
    c, token, backend = new_session(s)
    # used every 0.2 s for 1.6 s (longer than idle): stays, adopting refreshed tokens
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < 1.6 and n < 12:
        time.sleep(0.2)
        r = c.request("/", cookie=None, headers=[(NAME, token)])
        n += 1
        assert r.status == 200 and r.backend == backend, (n, r)
        if r.header(HEADER):
            token = r.header(HEADER)[0]
    # silence longer than the idle timeout: the token is dead
    time.sleep(1.5)
    r = c.request("/", cookie=None, headers=[(NAME, token)])
    assert r.status == 200
    assert len(r.header(HEADER)) == 1 and r.header(HEADER)[0] != token, \
        f"a token idle for 1.5 s with idle_timeout 1s was still accepted: {r.headers}"
    assert "reason=expired" in s.envoy.log()


def test_absolute_timeout_enforced(make_stack):
    s = make_stack({"type": "header", "session_name": NAME, "absolute_timeout": "2s"})
    c, token, backend = new_session(s)
    issued_at = time.monotonic()
    renewed_after = None
    while time.monotonic() - issued_at < 4.0:
        time.sleep(0.2)
        r = c.request("/", cookie=None, headers=[(NAME, token)])
        assert r.status == 200
        age = time.monotonic() - issued_at
        if r.header(HEADER):  # no idle timeout: no refreshes, a token here is a new session
            assert r.header(HEADER)[0] != token
            renewed_after = age
            break
        assert r.backend == backend, f"at {age:.1f}s moved to {r.backend} without a new token"
    assert renewed_after is not None, "token never expired with absolute_timeout 2s"
    assert 1.3 <= renewed_after <= 3.2, f"absolute_timeout 2s ended the session after {renewed_after:.2f}s"
