"""MCP sessions through tether and envoy/mcp.yaml, with the official SDKs on both ends.

Three stateful MCP servers (tests/e2e/mcp/server.py, the Python SDK) each keep their sessions in
memory and refuse ids they did not issue with 404, so a tool call that reaches another server
fails. The clients are the official Python SDK and the official TypeScript SDK (fetch-based, no
cookies): a session works only when tether learns the server's Mcp-Session-Id from the answer to
`initialize` and pins every later request (tool calls, the GET stream, the DELETE) to that server.
"""
from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest

import harness
from harness import HOST, free_port, wait_until
from mcp_programs import INITIALIZE, PROTOCOL_VERSION, McpServer, header, mcp_request, run_client, sse_messages
from topologies import (count_decisions, module_topology, new_key, plugin, shipped,  # noqa: F401 - fixture
                        topology, with_endpoints)

KINDS = ["python", "ts"]
N_SERVERS = 3
BACKEND_ID = re.compile(r"[0-9a-f]{32}")  # the server SDK's uuid4().hex
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
# The clients' bound on one call where a test waits for a call to fail.
CALL_TIMEOUT_S = 10.0


def mcp_plugin(**changes) -> dict:
    """envoy/mcp.yaml's plugin JSON with these fields changed (None removes one)."""
    cfg = json.loads(plugin(shipped("mcp.yaml")))
    for name, value in changes.items():
        if value is None:
            cfg.pop(name, None)
        else:
            cfg[name] = value
    return cfg


def start_servers(workdir, n=N_SERVERS, prefix="mcp", resumable=True) -> list[McpServer]:
    servers = []
    try:
        for i in range(1, n + 1):
            servers.append(McpServer(f"{prefix}-{i}", workdir, resumable=resumable).start())
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def stop_servers(servers):
    for s in servers:
        s.stop()


def add_envoy(topo, servers, name, **plugin_changes):
    ports = [s.port for s in servers]
    return topo.add_envoy("mcp.yaml", ports, build=with_endpoints({"mcp": ports}),
                          plugin_config=mcp_plugin(**plugin_changes), name=name)


def url(envoy) -> str:
    return f"http://{HOST}:{envoy.port}/mcp"


def counter(envoy, name: str) -> int:
    return envoy.stats(name).get(f"{harness.STAT_PREFIX}{name}", 0)


def wait_counter(envoy, name: str, at_least: int, timeout: float = 5.0) -> int:
    """Envoy flushes wasm counters to /stats asynchronously: wait (bounded) for the value."""
    try:
        return wait_until(lambda: (n := counter(envoy, name)) >= at_least and n, timeout,
                          what=f"{name} >= {at_least}")
    except TimeoutError:
        return counter(envoy, name)


def check_sessions(lines, sessions: int, counts: int, servers=None) -> dict[str, str]:
    """Every session worked on one server: no error, one envelope sent all along (never the
    server's id, never an address), the server's counter 1..counts, its GET stream and its DELETE
    answered. The envelope -> server map."""
    assert len(lines) == sessions, lines
    where = {}
    for line in lines:
        assert line["errors"] == [] and line.get("transport_errors", []) == [], line
        envelope = line["session"]
        assert envelope and VISIBLE_ASCII.fullmatch(envelope), line
        assert line["ids_sent"] == [envelope], f"the client sent more than one session id: {line}"
        results = line["results"]
        assert sorted(r["count"] for r in results) == list(range(1, counts + 1)), line
        (server,) = {r["server"] for r in results}
        (backend_id,) = {r["session"] for r in results}
        # The server saw its own id on every call, the client only the envelope.
        assert BACKEND_ID.fullmatch(backend_id) and backend_id != envelope, line
        assert backend_id not in envelope and HOST not in envelope, line
        if servers is not None:
            assert not any(str(s.port) in envelope for s in servers), line
        # The GET of the session's stream reached the server that holds the session (another
        # answers 404), and so did the DELETE that ended it.
        assert "GET 200" in line["http"] and "DELETE 200" in line["http"], line
        assert not any(h.endswith((" 404", " 503")) for h in line["http"]), line
        where[envelope] = server
    assert len(where) == sessions, f"sessions shared an envelope: {lines}"
    return where


# --------------------------------------------------------------------------------------------
# one Envoy, three servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    s = start_servers(tmp_path_factory.mktemp("mcp-servers"))
    yield s
    stop_servers(s)


@pytest.fixture(scope="module")
def keys():
    return [new_key()]


@pytest.fixture(scope="module")
def envoy(module_topology, servers, keys):
    return add_envoy(module_topology, servers, "mcp-envoy", keys=keys)


@pytest.mark.parametrize("kind", KINDS)
def test_ten_sessions_each_keep_one_server_for_every_request(envoy, servers, kind):
    ended_before = counter(envoy, "tether_sessions_ended")
    issued_before = counter(envoy, "tether_sessions_issued")
    code, lines, err = run_client(kind, url(envoy), calls=6, sessions=10)
    assert code == 0, (lines, err)
    where = check_sessions(lines, sessions=10, counts=6, servers=servers)
    # New sessions are still load-balanced.
    assert len(set(where.values())) == N_SERVERS, where
    assert wait_counter(envoy, "tether_sessions_issued", issued_before + 10) >= issued_before + 10
    assert wait_counter(envoy, "tether_sessions_ended", ended_before + 10) == ended_before + 10


@pytest.mark.parametrize("kind", KINDS)
def test_long_streaming_calls_interleaved_with_short_ones(envoy, kind):
    code, lines, err = run_client(kind, url(envoy), calls=4, slow=3.0, steps=4, sessions=4, parallel=True)
    assert code == 0, (lines, err)
    check_sessions(lines, sessions=4, counts=5)
    for line in lines:
        # The short calls went out while the slow call's SSE answer streamed (they got the lower
        # counts), and its progress and log messages all came through.
        assert [r["tool"] for r in line["results"]] == ["whoami"] * 4 + ["slow"], line
        assert line["results"][-1]["count"] == 5, line
        assert line["progress"] == 4 and line["logs"] == 4, line


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_resumed_with_last_event_id_reaches_the_server_that_holds_its_events(envoy, kind):
    # The server closes the slow call's stream halfway; the SDK resumes it with a GET carrying
    # Last-Event-ID, which only the server that sent the events can replay.
    code, lines, err = run_client(kind, url(envoy), calls=1, slow=2.0, steps=4, hangup=True, sessions=2)
    assert code == 0, (lines, err)
    check_sessions(lines, sessions=2, counts=2)
    for line in lines:
        assert line["http"].count("GET 200") >= 2 and line["progress"] == 4, line


def initialize(port: int) -> tuple[str, str]:
    """A raw `initialize` and `notifications/initialized` through Envoy: (envelope, the server's
    own id as the server reports it)."""
    status, headers, body = mcp_request(port, "POST", INITIALIZE)
    assert status == 200, (status, body)
    (envelope,) = header(headers, "mcp-session-id")
    status, _, _ = mcp_request(port, "POST", {"jsonrpc": "2.0", "method": "notifications/initialized"},
                               session=envelope)
    assert status == 202
    return envelope, whoami(port, envelope, 2)["session"]


def whoami(port: int, envelope: str, call_id: int, timeout: float = 5.0) -> dict:
    status, headers, body = raw_call(port, envelope, call_id, timeout=timeout)
    assert status == 200, (status, body)
    (answer,) = sse_messages(body)
    return json.loads(answer["result"]["content"][0]["text"])


def raw_call(port: int, envelope: str, call_id: int, timeout: float = 5.0):
    return mcp_request(port, "POST", {"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
                                      "params": {"name": "whoami", "arguments": {}}},
                       session=envelope, timeout=timeout)


def test_envoy_closes_an_idle_server_connection_before_the_server_does(envoy):
    # uvicorn closes a keep-alive connection idle for 5 s. Were Envoy to send a call on it just
    # as the server closes it, the call would be reset after it went out, which this route does
    # not retry: the client would get a 503. So Envoy closes it first (the cluster's idle_timeout).
    stats = "cluster.mcp.upstream_cx_(idle_timeout|destroy_remote)$"
    envelope, server = initialize(envoy.port)
    idle_since = time.monotonic()
    before = envoy.stats(stats)
    closed = wait_until(
        lambda: envoy.stats(stats).get("cluster.mcp.upstream_cx_idle_timeout", 0)
        > before.get("cluster.mcp.upstream_cx_idle_timeout", 0), 4.8 - (time.monotonic() - idle_since),
        what="Envoy closing the idle server connection")
    assert closed and time.monotonic() - idle_since < 5.0
    time.sleep(max(0.0, 5.5 - (time.monotonic() - idle_since)))
    # Past the server's own keep-alive timeout, the session's next call is served by its server
    # on a new connection, and the server closed none of Envoy's connections meanwhile.
    answer = whoami(envoy.port, envelope, 3)
    assert answer["session"] == server and answer["count"] == 2, answer
    after = envoy.stats(stats)
    assert after.get("cluster.mcp.upstream_cx_destroy_remote", 0) \
        == before.get("cluster.mcp.upstream_cx_destroy_remote", 0), (before, after)


def test_a_forged_or_altered_envelope_never_steers_and_reaches_the_server_as_it_came(envoy):
    envelope, _ = initialize(envoy.port)
    before = counter(envoy, "tether_invalid_tokens")
    flipped = envelope[:-3] + ("A" if envelope[-3] != "A" else "B") + envelope[-2:]
    bad = [flipped, envelope[: len(envelope) // 2], "0" * 32, "t1." + "A" * 80]
    for value in bad:
        # No server holds the value (it came to the server unchanged, not opened), so every one
        # answers 404, and the client starts a new session.
        status, headers, body = raw_call(envoy.port, value, 9)
        assert status == 404, (value, status, body)
        assert header(headers, "mcp-session-id") == [], headers
    # The altered and truncated envelopes are counted; the two values that are not envelopes at
    # all may be counted too.
    assert wait_counter(envoy, "tether_invalid_tokens", before + 2) >= before + 2
    # The real envelope still works.
    assert whoami(envoy.port, envelope, 10)["count"] == 2


def test_a_delete_the_server_accepts_ends_the_session_and_its_envelope_after(envoy):
    envelope, _ = initialize(envoy.port)
    status, headers, _ = mcp_request(envoy.port, "DELETE", session=envelope)
    assert status == 200, status
    # The server's own id is not handed to the client on the way back.
    assert all(BACKEND_ID.fullmatch(v) is None for v in header(headers, "mcp-session-id")), headers
    status, _, body = raw_call(envoy.port, envelope, 3)
    assert status == 404, body


# --------------------------------------------------------------------------------------------
# idle_timeout and an open stream


def assert_expired(env, envelope: str, expired_before: int):
    """The session's next call finds it expired: its envelope steers nowhere (the server that
    would know the session is not asked)."""
    status, _, body = raw_call(env.port, envelope, 4)
    assert status == 404, body
    assert wait_counter(env, "tether_expired", expired_before + 1) >= expired_before + 1


def test_an_open_stream_keeps_an_idle_session_and_the_clock_counts_from_its_end(topology, tmp_path):
    servers = start_servers(tmp_path)
    try:
        env = add_envoy(topology, servers, "mcp-idle", keys=[new_key()], idle_timeout="3s")
        # Each session's slow call streams for 8 s while nothing else is asked; the calls after
        # it come 8 s after the last request began, with an idle_timeout of 3 s.
        for kind in KINDS:
            code, lines, err = run_client(kind, url(env), calls=0, slow=8.0, steps=4, after=2,
                                          sessions=3, parallel=True)
            assert code == 0, (kind, lines, err)
            check_sessions(lines, sessions=3, counts=3)
        # Control: a session with no stream open goes idle, and its envelope then steers nowhere.
        expired_before = counter(env, "tether_expired")
        envelope, _ = initialize(env.port)
        assert whoami(env.port, envelope, 3)["count"] == 2
        time.sleep(4.5)
        assert_expired(env, envelope, expired_before)
    finally:
        stop_servers(servers)


def test_an_open_stream_keeps_its_session_for_the_requests_made_while_it_lasts(topology, tmp_path):
    servers = start_servers(tmp_path)
    try:
        env = add_envoy(topology, servers, "mcp-open", keys=[new_key()], idle_timeout="3s")
        envelope, server = initialize(env.port)
        expired_before = counter(env, "tether_expired")
        # The session's GET stream opens and stays open with nothing on it; the session's next
        # call comes more than twice the idle timeout later, likely on another worker.
        stream = http.client.HTTPConnection(HOST, env.port, timeout=15)
        try:
            stream.request("GET", "/mcp", headers={
                "Accept": "text/event-stream", "Mcp-Session-Id": envelope,
                "MCP-Protocol-Version": PROTOCOL_VERSION})
            opened = stream.getresponse()
            assert opened.status == 200, opened.status
            time.sleep(6.5)
            answer = whoami(env.port, envelope, 3)
            assert answer["session"] == server and answer["count"] == 2, answer
            assert counter(env, "tether_expired") == expired_before
        finally:
            stream.close()
        # Its end lets the clock run: the same silence with no stream open ends the session.
        time.sleep(4.5)
        assert_expired(env, envelope, expired_before)
    finally:
        stop_servers(servers)


def test_the_bindings_a_streams_end_lets_go_leave_the_live_bindings_gauge(topology, tmp_path):
    servers = start_servers(tmp_path)
    try:
        # One bucket (8 sessions): the write a stream's end makes holds every binding.
        env = add_envoy(topology, servers, "mcp-stream-end", keys=[new_key()], idle_timeout="3s",
                        max_sessions=8)

        def live():
            return env.stats("tether_live_bindings").get(f"{harness.STAT_PREFIX}tether_live_bindings")

        for _ in range(3):
            initialize(env.port)
        envelope, _ = initialize(env.port)
        assert wait_until(lambda: live() == 4, 5, what="four live bindings")
        time.sleep(1.5)
        # A call streaming 2.5 s: its answer is a use (the others are 1.5 s idle: kept); its end
        # is one again, when the others are over 3 s idle, and that write lets them go.
        status, _, body = mcp_request(env.port, "POST", {
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "slow", "arguments": {"seconds": 2.5, "steps": 2}}},
            session=envelope, timeout=15)
        assert status == 200, body
        assert wait_until(lambda: live() == 1, 5, what="only the streaming session's binding")
        assert whoami(env.port, envelope, 8)["count"] >= 1
    finally:
        stop_servers(servers)


# --------------------------------------------------------------------------------------------
# two replicas


def front_config(admin_port: int, port: int, replica_ports) -> dict:
    """A plain Envoy (no tether) that sends each request to the next replica in turn."""
    return {
        "admin": {"address": {"socket_address": {"address": HOST, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "front",
                "address": {"socket_address": {"address": HOST, "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "front",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "replicas", "timeout": "0s"}}]}]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters."
                                                      "http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "replicas", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
                "load_assignment": {"cluster_name": "replicas", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": p}}}}
                    for p in replica_ports]}]},
            }],
        },
    }


def test_two_replicas_with_the_same_keys_serve_a_session_alternately(topology, tmp_path):
    servers = start_servers(tmp_path)
    front = None
    try:
        shared = [new_key()]
        a = add_envoy(topology, servers, "mcp-replica-a", keys=shared)
        b = add_envoy(topology, servers, "mcp-replica-b", keys=shared)
        front = harness.Envoy(tmp_path, [], config=front_config(free_port(), free_port(), [a.port, b.port]),
                              concurrency=1, name="front").start(wait_healthy=False)
        hits_before = {r.name: counter(r, "tether_hits") for r in (a, b)}
        for kind in KINDS:
            code, lines, err = run_client(kind, url(front), calls=6, sessions=4)
            assert code == 0, (kind, lines, err)
            check_sessions(lines, sessions=4, counts=6, servers=servers)
        # Both replicas pinned returning requests: envelopes one sealed, the other opened.
        for r in (a, b):
            assert wait_counter(r, "tether_hits", hits_before[r.name] + 20) >= hits_before[r.name] + 20, r.name

        # Raw requests, alternating by hand; then one replica restarts and the other one alone
        # carries the session on (nothing of it was kept in either Envoy).
        envelope, backend_id = initialize(a.port)
        for i, replica in enumerate([b, a, b, a], start=3):
            answer = whoami(replica.port, envelope, i)
            assert answer["count"] == i - 1 and answer["session"] == backend_id, answer
        a.restart()
        assert whoami(a.port, envelope, 7)["count"] == 6
        assert whoami(b.port, envelope, 8)["count"] == 7

        # A replica with other keys does not open them: to it, the envelope is no session.
        c = add_envoy(topology, servers, "mcp-replica-c", keys=[new_key()])
        status, _, body = raw_call(c.port, envelope, 9)
        assert status == 404, body
    finally:
        if front is not None:
            front.stop()
        stop_servers(servers)


# --------------------------------------------------------------------------------------------
# a server killed mid-session


def busy_server(envoy, servers, timeout: float = 10.0) -> McpServer:
    """The one server Envoy has requests open to (the session's GET stream and its slow call)."""
    by_port = {s.port: s for s in servers}

    def busy():
        _, body = envoy.admin("/clusters")
        active = set()
        for line in body.splitlines():
            m = re.match(rf"^mcp::{re.escape(HOST)}:(\d+)::rq_active::(\d+)$", line.strip())
            if m and int(m.group(2)) > 0:
                active.add(int(m.group(1)))
        return len(active) == 1 and by_port.get(active.pop())

    return wait_until(busy, timeout, what="one server with open requests")


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_killed_mid_session_fails_fast_and_the_next_session_works(topology, tmp_path, kind):
    servers = start_servers(tmp_path, resumable=False)
    try:
        env = add_envoy(topology, servers, f"mcp-kill-{kind}", keys=[new_key()])
        result = {}
        started = time.monotonic()
        runner = threading.Thread(target=lambda: result.update(
            run=run_client(kind, url(env), calls=0, slow=8.0, steps=8, after=2, timeout=40,
                           call_timeout=CALL_TIMEOUT_S)))
        runner.start()
        victim = busy_server(env, servers)
        time.sleep(1.0)
        victim.kill()
        runner.join(60)
        assert not runner.is_alive(), "the client hung after its server died"
        code, lines, err = result["run"]
        (line,) = lines
        # The session died with its server: the client was told so (its stream broke, its next
        # calls got the other servers' 404), never left waiting. A call whose stream broke may
        # wait out the SDK's own call timeout (the TypeScript SDK waits for a reconnection that
        # cannot come); every request Envoy got was answered at once, so the whole run stays
        # within one call timeout and a margin smaller than a second one.
        assert code == 1 and line["errors"], line
        assert any(h.endswith(" 404") for h in line["http"]), line
        assert time.monotonic() - started < 2 * CALL_TIMEOUT_S, line
        # The client starts again: new sessions land on the servers still alive, and work.
        code, lines, err = run_client(kind, url(env), calls=3, sessions=4)
        assert code == 0, (lines, err)
        where = check_sessions(lines, sessions=4, counts=3)
        assert victim.name not in where.values(), where
    finally:
        stop_servers(servers)


def test_a_server_killed_with_strict_sessions_refuses_at_once(topology, tmp_path):
    servers = start_servers(tmp_path, resumable=False)
    try:
        env = add_envoy(topology, servers, "mcp-strict", keys=[new_key()], on_unavailable="strict",
                        retry_after="7s")
        envelope, _ = initialize(env.port)
        victim = next(s for s in servers if s.name == whoami(env.port, envelope, 3)["server"])
        victim.kill()
        began = time.monotonic()
        status, headers, body = raw_call(env.port, envelope, 4, timeout=10)
        assert time.monotonic() - began < 3, "a strict refusal must not wait"
        assert status == 503, body
        assert header(headers, "retry-after") == ["7"], headers
        # A new session meanwhile goes to a live server.
        _, backend_id = initialize(env.port)
        assert BACKEND_ID.fullmatch(backend_id)
        assert count_decisions(env, "strict_refusal") >= 1
    finally:
        stop_servers(servers)


# --------------------------------------------------------------------------------------------
# envelope: false, the binding table


@pytest.mark.parametrize("kind", KINDS)
def test_without_envelopes_the_servers_id_is_bound_in_the_table_and_the_delete_frees_it(topology, tmp_path, kind):
    servers = start_servers(tmp_path)
    try:
        env = add_envoy(topology, servers, f"mcp-table-{kind}", keys=None, envelope=False)
        code, lines, err = run_client(kind, url(env), calls=4, sessions=5)
        assert code == 0, (lines, err)
        assert len(lines) == 5
        for line in lines:
            assert line["errors"] == [], line
            results = line["results"]
            # The client holds the server's own id.
            assert {r["session"] for r in results} == {line["session"]}, line
            assert sorted(r["count"] for r in results) == [1, 2, 3, 4], line
            assert len({r["server"] for r in results}) == 1, line
            assert "GET 200" in line["http"] and "DELETE 200" in line["http"], line
        assert wait_counter(env, "tether_sessions_ended", 5) == 5
        assert wait_until(lambda: env.stats("tether_live_bindings").get(f"{harness.STAT_PREFIX}tether_live_bindings") == 0,
                          5, what="no live binding after every DELETE")
    finally:
        stop_servers(servers)
