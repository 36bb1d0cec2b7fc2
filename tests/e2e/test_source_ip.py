"""`type: source_ip`: the client's address is the session (the peer's, or a trusted X-Forwarded-For entry).

Every test client is on loopback; other "clients" connect from 127.0.0.N (Envoy listens on
127.0.0.1 and accepts from any 127.x address). Sessions live in the module's Envoy for the
whole module, so every test uses addresses of its own.
"""
import pytest

XFF = "x-forwarded-for"


@pytest.fixture(scope="module")
def peer(module_stacks):
    return module_stacks({"type": "source_ip"})


@pytest.fixture(scope="module")
def xff(module_stacks):
    return module_stacks({"type": "source_ip", "trusted_hops": 1})


def test_each_client_address_sticks_to_one_endpoint(peer):
    addrs = ["127.0.0.1"] + [f"127.0.0.{n}" for n in range(2, 10)]
    first = {}
    for a in addrs:
        r = peer.client(source_ip=a, fresh=True).request("/", cookie=None)
        assert r.status == 200, (a, r)
        assert r.header("set-cookie") == [], r
        first[a] = r.backend
    # 9 new sessions over 2 workers: one worker chose at least 5 times in a row
    assert set(first.values()) == set(peer.backends), f"client addresses not balanced: {first}"
    moved = []
    for a in addrs:
        keep = peer.client(source_ip=a)
        fresh = peer.client(source_ip=a, fresh=True)
        for i in range(10):
            r = (fresh if i % 2 else keep).request(f"/p/{i}", cookie=None)
            assert r.status == 200, r
            assert r.header("set-cookie") == [], r
            if r.backend != first[a]:
                moved.append((a, i, first[a], r.backend))
    assert moved == [], f"a client address left its endpoint: {moved}"


def test_address_session_ignores_cookies_and_routing_header(peer):
    a = "127.0.0.20"
    c = peer.client(source_ip=a)
    pinned = c.request("/", cookie=None).backend
    others = [b.address for n, b in peer.backends.items() if n != pinned]
    for i, target in enumerate(others * 2):
        r = c.request("/", cookie=f"tether=x{i}", headers=[("x-tether-host", target)])
        assert r.status == 200 and r.backend == pinned, (target, r)


def test_untrusted_xff_does_not_change_the_session(peer):
    """trusted_hops 0 means the peer's address: a client-sent X-Forwarded-For must not choose."""
    a = "127.0.0.21"
    c = peer.client(source_ip=a)
    pinned = c.request("/", cookie=None).backend
    served = []
    for n in range(1, 7):
        r = c.request("/", cookie=None, headers=[(XFF, f"198.51.100.{n}")])
        assert r.status == 200, r
        served.append((f"198.51.100.{n}", r.backend))
    assert all(b == pinned for _, b in served), (
        f"{a} is pinned to {pinned}, but with trusted_hops 0 a client-sent X-Forwarded-For "
        f"chose other sessions: {served}")


def test_trusted_hop_xff_entry_is_the_client(xff):
    c = xff.client(fresh=False)  # one connection: one worker's round robin
    first = {}
    for n in range(1, 10):
        ip = f"203.0.113.{n}"
        r = c.request("/", cookie=None, headers=[(XFF, ip)])
        assert r.status == 200, r
        first[ip] = r.backend
    picks = [first[f"203.0.113.{n}"] for n in range(1, 10)]
    for i in range(len(picks) - 2):
        assert len(set(picks[i:i + 3])) == 3, f"X-Forwarded-For clients not distinct sessions: {first}"
    # each XFF client sticks, whatever peer address and connection it comes from
    moved = []
    for ip, backend in first.items():
        for k, src in enumerate(["127.0.0.1", "127.0.0.30", "127.0.0.31", "127.0.0.32"]):
            r = xff.client(source_ip=src, fresh=True).request(f"/x/{k}", cookie=None, headers=[(XFF, ip)])
            assert r.status == 200, r
            if r.backend != backend:
                moved.append((ip, src, backend, r.backend))
    assert moved == [], f"XFF clients moved: {moved}"


def test_spoofed_entries_left_of_trusted_hop_do_not_change_the_pin(xff):
    c = xff.client()
    ip = "203.0.113.77"
    pinned = c.request("/", cookie=None, headers=[(XFF, ip)]).backend
    spoofs = [f"6.6.6.{n}, {ip}" for n in range(1, 5)] + [
        f"1.2.3.4, 5.6.7.8, {ip}", f"{ip}, 9.9.9.9, {ip}", f"garbage, {ip}", f"10.0.0.1,{ip}"]
    served = []
    for value in spoofs:
        r = c.request("/", cookie=None, headers=[(XFF, value)])
        assert r.status == 200, r
        served.append((value, r.backend))
    assert all(b == pinned for _, b in served), f"{ip} pinned to {pinned}; with spoofed entries: {served}"
    # a different trusted entry is a different client, whatever is spoofed to its left
    other = []
    for n in range(1, 7):
        r = c.request("/", cookie=None, headers=[(XFF, f"{ip}, 203.0.113.{100 + n}")])
        other.append(r.backend)
    assert len(set(other)) >= 2, f"rightmost entries differ but every request went to one endpoint: {other}"
