"""Any Cookie header gets a normal answer and never kills the filter's VM.

Envoy's own HTTP/1 codec answers 400 to header values with NUL, CR, LF or other control
characters except TAB (measured with the filter removed), so only TAB is sent here among them:
everything below reaches the filter.
"""
import base64
import secrets

from harness import COOKIE, ROUTING_HEADER, envoy_problems, pinned_client


def corpus(valid: str):
    """(label, [Cookie header values], [extra headers]) -- values are bytes sent as is."""
    v = valid.encode()
    forged22 = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=")
    many = b"; ".join(b"c%d=v%d" % (i, i) for i in range(1000))
    return [
        ("non-utf8 value", [b"tether=\xff\xfe\xfd"], []),
        ("non-utf8 name", [b"\xc3\x28=1; tether=\xa0\xa1"], []),
        ("lone continuation", [b"tether=\x80"], []),
        ("overlong utf8", [b"tether=\xc0\xaf\xe0\x80\xaf"], []),
        ("surrogate utf8", [b"tether=\xed\xa0\x80"], []),
        ("non-utf8 before valid", [b"\xff=\xfe; tether=" + v], []),
        ("valid utf8 multibyte", ["tether=ü€😀; ключ=значение".encode()], []),
        ("8KiB value", [b"tether=" + b"A" * 8192], []),
        ("8KiB non-utf8 value", [b"tether=" + bytes(range(0x80, 0x100)) * 64], []),
        ("8KiB other cookie", [b"big=" + b"B" * 8192 + b"; tether=" + forged22], []),
        ("8KiB name", [b"N" * 8192 + b"=1"], []),
        ("empty value", [b"tether="], []),
        ("name only", [b"tether"], []),
        ("equals semicolons", [b"=;;;"], []),
        ("semicolons", [b";;;"], []),
        ("equals", [b"="], []),
        ("equals run", [b"==="], []),
        ("value of equals", [b"tether==="], []),
        ("value with equals", [b"tether=a=b=c"], []),
        ("quoted value", [b'tether="abc"'], []),
        ("quoted valid value", [b'tether="' + v + b'"'], []),
        ("lone quote", [b'tether="'], []),
        ("quoted name", [b'"tether"="x"'], []),
        ("tab in value", [b"tether=\tx"], []),
        ("tabs and spaces", [b"\t tether = x \t;  ; tether\t=\t"], []),
        ("percent escapes", [b"tether=%00%ff%zz"], []),
        ("backslashes", [b"tether=" + b"\\" * 10], []),
        ("repeated empty", [b"tether=;tether=;tether="], []),
        ("uppercase name", [b"TETHER=" + v], []),
        ("space around name", [b" tether =" + v], []),
        ("valid with suffix", [b"tether=" + v + b"x"], []),
        ("valid truncated", [b"tether=" + v[:-1]], []),
        ("valid with padding", [b"tether=" + v + b"=="], []),
        ("many cookies", [many], []),
        ("many tether cookies", [b"; ".join(b"tether=g%d" % i for i in range(500))], []),
        ("two cookie headers", [b"a=1", b"tether=\xff"], []),
        ("two cookie headers, valid second", [b"tether=garbage", b"tether=" + v], []),
        ("semicolon-only header then valid", [b";", b"tether=" + v], []),
        ("routing header non-utf8", [], [(ROUTING_HEADER, b"\xff\xfe")]),
        ("routing header unknown address", [], [(ROUTING_HEADER, "127.0.0.1:1")]),
        ("routing header long", [], [(ROUTING_HEADER, "9" * 8192)]),
        ("routing header with garbage cookie", [b"tether=\xff"], [(ROUTING_HEADER, "127.0.0.1:1,")]),
        ("routing header with valid cookie", [b"tether=" + v], [(ROUTING_HEADER, b"\x80")]),
    ]


def test_duplicate_session_names_still_pinned(env):
    c, first = pinned_client(env, "backend-1")
    valid = c.jar[COOKIE]
    cases = {
        "garbage first": f"{COOKIE}=garbage; {COOKIE}={valid}",
        "valid first": f"{COOKIE}={valid}; {COOKIE}=garbage",
        "empty first": f"{COOKIE}=; {COOKIE}={valid}",
        "forged first": f"{COOKIE}=AAAAAAAAAAAAAAAAAAAAAA; {COOKIE}={valid}",
        "among others": f"a=1; {COOKIE}={valid}; b=2",
    }
    for label, header in cases.items():
        for fresh in (False, True, True):  # several workers
            client = env.client(fresh=fresh)
            for _ in range(3):
                r = client.request("/", cookie=header, update_jar=False)
                assert r.status == 200, (label, r)
                assert r.backend == first.backend, f"{label}: {header!r} went to {r.backend}"
                assert r.header("set-cookie") == [], f"{label}: {r.header('set-cookie')}"
            client.close()


def test_any_cookie_header_gets_normal_answer(env):
    c, _ = pinned_client(env, "backend-1")
    failures = []
    for label, cookies, extra in corpus(c.jar[COOKIE]):
        for _ in range(4):  # new connection each time: spread over both workers
            client = env.client(fresh=True)
            try:
                r = client.request("/bad", cookie=cookies or None, headers=extra, update_jar=False)
            except Exception as exc:  # noqa: BLE001 - recorded and reported below
                failures.append((label, repr(exc)))
                continue
            if r.status != 200 or r.backend not in env.backends:
                failures.append((label, r.status, r.body[:200]))
    assert failures == [], f"{len(failures)} corpus requests failed: {failures[:20]}"

    # a panic would have killed the VM of a worker: later requests on it would fail
    after = []
    session = env.client(fresh=True)
    for i in range(50):
        r = session.request(f"/after/{i}")
        after.append(r.status)
    for i in range(50):
        r = env.client(fresh=True).request(f"/after-new/{i}")
        after.append(r.status)
    assert after == [200] * 100, f"after the corpus: {after.count(200)}/100 ok, statuses {sorted(set(after))}"
    assert env.envoy.bad_log_lines() == []


def test_zz_envoy_still_ready(env):
    assert envoy_problems(env) == []
