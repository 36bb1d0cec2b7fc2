"""HTTP/2 clients (cleartext, prior knowledge, as curl and gRPC clients speak it to the shipped
listener): sessions pin as over HTTP/1.1, and a Cookie sent as several header fields, which
HTTP/2 allows (RFC 9113 8.2.3; browsers do it to compress better), still carries the session."""
import shutil
import subprocess

from harness import COOKIE, ROUTING_HEADER, Response

CURL = shutil.which("curl")


def h2_get(port: int, headers: list[str] = ()) -> Response:
    """One GET over HTTP/2 with curl (each -H a header field of its own)."""
    assert CURL, "curl is missing: .ci/run installs it with apt-get"
    cmd = [CURL, "-sS", "-i", "--http2-prior-knowledge", "--max-time", "5"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(cmd, capture_output=True, timeout=15)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/2 "), f"not an HTTP/2 response: {lines[0]!r}"
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Response(status, headers, body)


def test_h2_session_is_issued_then_pinned(env):
    first = h2_get(env.port)
    assert first.status == 200 and first.backend in env.backends, first.headers
    sc = first.set_cookie(COOKIE)
    assert sc is not None, f"no {COOKIE} cookie over HTTP/2: {first.header('set-cookie')}"
    token = sc.value
    seen = {h2_get(env.port, [f"cookie: {COOKIE}={token}"]).backend for _ in range(6)}
    assert seen == {first.backend}, f"HTTP/2 session moved: first {first.backend}, then {seen}"
    # and new HTTP/2 sessions are still spread
    spread = {h2_get(env.port).backend for _ in range(6)}
    assert len(spread) >= 2, f"new HTTP/2 sessions all went to {spread}"


def test_h2_cookie_in_several_fields_still_pins_and_is_stripped(env):
    first = h2_get(env.port)
    sc = first.set_cookie(COOKIE)
    assert sc is not None, first.header("set-cookie")
    token = sc.value
    for fields in (["cookie: a=1", f"cookie: {COOKIE}={token}", "cookie: b=2"],
                   [f"cookie: {COOKIE}={token}", "cookie: a=1"],
                   ["cookie: a=1", f"cookie: {COOKIE}={token}"]):
        r = h2_get(env.port, fields)
        assert r.status == 200 and r.backend == first.backend, (fields, r.backend, first.backend)
        assert r.header("set-cookie") == [], (fields, r.header("set-cookie"))
        sent_to_backend = "; ".join(r.echoed_headers().get("cookie", []))
        assert f"{COOKIE}=" not in sent_to_backend, f"tether's cookie reached the backend: {sent_to_backend!r}"
        assert "a=1" in sent_to_backend, f"the other cookies were lost: {sent_to_backend!r}"


def test_h2_client_cannot_steer_with_the_routing_header(env):
    target = sorted(env.backends)[0]
    address = f"127.0.0.1:{env.backend(target).port}"
    seen = [h2_get(env.port, [f"{ROUTING_HEADER}: {address}"]) for _ in range(6)]
    assert len({r.backend for r in seen}) >= 2, \
        f"a client-sent {ROUTING_HEADER} steered HTTP/2 requests: {[r.backend for r in seen]}"
    for r in seen:
        assert ROUTING_HEADER not in r.echoed_headers(), f"backend saw {ROUTING_HEADER}: {r.echoed_headers()}"
