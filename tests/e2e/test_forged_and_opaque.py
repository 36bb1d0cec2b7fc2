"""The cookie value says nothing about the endpoint; values the filter never issued are no session."""
import base64
import os
import secrets

import pytest

from harness import COOKIE, encodings_of, envoy_problems, pinned_client


def _sessions_on_every_backend(env, per_backend=2, max_requests=30):
    """{backend: [cookie values]} with at least `per_backend` new sessions on each backend."""
    found = {name: [] for name in env.backends}
    c = env.client()
    for _ in range(max_requests):
        r = c.request("/", cookie=None, update_jar=False)
        assert r.status == 200
        sc = r.set_cookie(COOKIE)
        assert sc is not None, r
        found[r.backend].append(sc.value)
        if all(len(v) >= per_backend for v in found.values()):
            return found
    raise AssertionError(f"new sessions did not reach every backend: { {k: len(v) for k, v in found.items()} }")


def test_cookie_value_does_not_reveal_endpoint(env):
    sessions = _sessions_on_every_backend(env, per_backend=3)
    for name, values in sessions.items():
        backend = env.backends[name]
        needles = encodings_of(backend.address) | encodings_of(str(backend.port), aligned_only=True)
        needles |= encodings_of(name)
        for value in values:
            leaked = sorted(n for n in needles if n.lower() in value.lower())
            assert not leaked, f"cookie {value!r} of {name} ({backend.address}) contains {leaked}"


def test_same_endpoint_sessions_get_unrelated_values(env):
    sessions = _sessions_on_every_backend(env, per_backend=3)
    all_values = [v for vs in sessions.values() for v in vs]
    assert len(set(all_values)) == len(all_values), all_values
    for name, values in sessions.items():
        # a value derived from the endpoint (even encrypted deterministically) would repeat or
        # share a long common prefix/suffix among sessions of one endpoint
        for i, a in enumerate(values):
            for b in values[i + 1:]:
                prefix = os.path.commonprefix([a, b])
                suffix = os.path.commonprefix([a[::-1], b[::-1]])
                assert len(prefix) < 8 and len(suffix) < 8, (
                    f"sessions of {name} share structure: {a!r} {b!r}")
        assert all(len(v) >= 16 for v in values), f"session values too short to be unguessable: {values}"


def _never_issued_values():
    return {
        "word": "garbage",
        "b64url22": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
        "hex32": secrets.token_hex(16),
        "b64std": base64.b64encode(secrets.token_bytes(24)).decode(),
        "long": "x" * 300,
        "digits": "1234567890123456789012",
    }


@pytest.mark.parametrize("kind", list(_never_issued_values()))
def test_never_issued_value_starts_new_session(env, kind):
    forged = _never_issued_values()[kind]
    c = env.client()
    r = c.request("/", cookie=f"{COOKIE}={forged}")
    assert r.status == 200
    sc = r.set_cookie(COOKIE)
    assert sc is not None, f"forged value {forged!r} was accepted as a session: {r}"
    assert sc.value != forged, "session fixation: the client's value was issued back"
    assert sc.value
    # the forged value still is no session; the issued one is
    r2 = c.request("/", cookie=f"{COOKIE}={forged}", update_jar=False)
    sc2 = r2.set_cookie(COOKIE)
    assert sc2 is not None and sc2.value not in (forged, sc.value), r2
    bound = r.backend
    for _ in range(5):
        r3 = c.request("/")
        assert r3.status == 200 and r3.backend == bound and r3.header("set-cookie") == [], r3


def test_tampered_value_is_no_session(env):
    c, first = pinned_client(env, sorted(env.backends)[0])
    value = c.jar[COOKIE]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for pos in (0, len(value) // 2, len(value) - 1):
        ch = value[pos]
        repl = alphabet[(alphabet.find(ch) + 1) % len(alphabet)] if ch in alphabet else "A"
        tampered = value[:pos] + repl + value[pos + 1:]
        for variant in (tampered, value[:-1], value + "A", value[::-1]):
            if variant == value:
                continue
            r = c.request("/", cookie=f"{COOKIE}={variant}", update_jar=False)
            assert r.status == 200
            sc = r.set_cookie(COOKIE)
            assert sc is not None, f"altered value {variant!r} (of {value!r}) accepted as a session"
            assert sc.value not in (variant, value), sc.raw
    # the genuine value still works
    r = c.request("/")
    assert r.backend == first.backend and r.header("set-cookie") == [], r


def test_old_value_after_envoy_restart_is_no_session(make_stack):
    s = make_stack()
    c = s.client()
    r = c.request("/")
    old = c.jar[COOKIE]
    assert c.request("/").header("set-cookie") == []
    c.close()
    s.envoy.restart()
    c = s.client()
    r = c.request("/", cookie=f"{COOKIE}={old}")
    assert r.status == 200
    sc = r.set_cookie(COOKIE)
    assert sc is not None, f"a value issued by the previous Envoy process was still valid: {r}"
    assert sc.value != old
    assert c.request("/").header("set-cookie") == []


def test_zz_envoy_still_ready(env):
    assert envoy_problems(env) == []
