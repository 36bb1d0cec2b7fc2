"""The MCP programs of tests/e2e/mcp/ against each other, without Envoy: the server (official Python
SDK) issues one Mcp-Session-Id per session, keeps the session's state, and forgets it when the
client's close sends DELETE; both official clients (Python, TypeScript) hold one id for the whole
session. The end-to-end tests through tether rely on exactly this."""
from __future__ import annotations

import http.client
import json
import re

import pytest

from harness import HOST
from mcp_programs import (INITIALIZE, PROTOCOL_VERSION, McpServer, header, mcp_request,
                          run_client, sse_messages)

NAME = "mcp-a"
SESSION_ID = re.compile(r"[0-9a-f]{32}")  # the SDK's uuid4().hex
KINDS = ["python", "ts"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = McpServer(NAME, tmp_path_factory.mktemp("mcp-programs"))
    try:
        yield s.start()
    finally:
        s.stop()


def check_sessions(lines, sessions, calls, extra=0):
    assert len(lines) == sessions, lines
    ids = set()
    for line in lines:
        assert line["errors"] == [], line
        sid = line["session"]
        assert sid and SESSION_ID.fullmatch(sid), line
        assert line["ids_sent"] == [sid], f"the client sent more than one session id: {line}"
        ids.add(sid)
        counts = [r["count"] for r in line["results"]]
        assert sorted(counts) == list(range(1, calls + extra + 1)), line
        assert {r["server"] for r in line["results"]} == {NAME}, line
        assert {r["session"] for r in line["results"]} == {sid}, line
        assert "DELETE 200" in line["http"], line
        # The client opens the session's GET stream by itself once initialized.
        assert "GET 200" in line["http"], line
    assert len(ids) == sessions, f"sessions shared an id: {lines}"
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_each_session_counts_on_its_own_and_is_gone_after_the_close(server, kind):
    code, lines, err = run_client(kind, server.url, calls=3, sessions=2)
    assert code == 0, (lines, err)
    for sid in check_sessions(lines, sessions=2, calls=3):
        for method, body in [("POST", {"jsonrpc": "2.0", "id": 7, "method": "ping"}), ("GET", None),
                             ("DELETE", None)]:
            status, _, text = mcp_request(server.port, method, body, session=sid)
            assert status == 404, f"{method} with the closed session {sid}: {status} {text}"


@pytest.mark.parametrize("kind", KINDS)
def test_short_calls_go_through_while_a_slow_call_streams(server, kind):
    code, lines, err = run_client(kind, server.url, calls=3, slow=2.0, steps=4, parallel=True, sessions=2)
    assert code == 0, (lines, err)
    check_sessions(lines, sessions=2, calls=3, extra=1)
    for line in lines:
        assert [r["tool"] for r in line["results"]] == ["whoami"] * 3 + ["slow"], line
        # Progress and log messages came over the slow call's own SSE response.
        assert line["progress"] == 4 and line["logs"] == 4, line
        # Each short call began while the slow one was still running, so it got the lower counts.
        assert line["results"][-1]["count"] == 4, line


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_the_server_closes_is_resumed_with_last_event_id(tmp_path, kind):
    s = McpServer("mcp-r", tmp_path, resumable=True).start()
    try:
        code, lines, err = run_client(kind, s.url, calls=1, slow=2.0, steps=4, hangup=True)
        assert code == 0, (lines, err)
        (line,) = lines
        assert line["errors"] == [] and [r["tool"] for r in line["results"]] == ["whoami", "slow"], line
        assert line["results"][-1]["server"] == "mcp-r", line
        # The resumption is a second GET of the session, beside the one of its notification stream.
        assert line["http"].count("GET 200") >= 2, line
        assert line["progress"] == 4, line
    finally:
        assert s.stop() == 0


def test_the_server_issues_the_id_on_initialize_and_refuses_ids_it_does_not_hold(server):
    status, headers, body = mcp_request(server.port, "POST", INITIALIZE)
    assert status == 200, body
    names = [k for k, _ in headers]
    assert "mcp-session-id" in names, f"the id's header name on the wire: {names}"
    (sid,) = header(headers, "mcp-session-id")
    assert SESSION_ID.fullmatch(sid), sid
    assert header(headers, "content-type")[0].startswith("text/event-stream"), headers
    (answer,) = sse_messages(body)
    assert answer["result"]["protocolVersion"] == PROTOCOL_VERSION, answer

    # Every answer within the session names it again, not only the initialize one.
    status, headers, _ = mcp_request(server.port, "POST",
                                     {"jsonrpc": "2.0", "method": "notifications/initialized"}, session=sid)
    assert status == 202 and header(headers, "mcp-session-id") == [sid], headers
    status, headers, body = mcp_request(server.port, "POST", {"jsonrpc": "2.0", "id": 2, "method": "ping"},
                                        session=sid)
    assert status == 200 and header(headers, "mcp-session-id") == [sid], headers
    assert sse_messages(body) == [{"jsonrpc": "2.0", "id": 2, "result": {}}], body

    # An id the server never issued, and a request without one after initialize.
    status, headers, body = mcp_request(server.port, "POST", {"jsonrpc": "2.0", "id": 3, "method": "ping"},
                                        session="0" * 32)
    assert status == 404 and header(headers, "mcp-session-id") == [], (headers, body)
    assert json.loads(body)["error"]["message"] == "Session not found", body
    status, _, body = mcp_request(server.port, "POST", {"jsonrpc": "2.0", "id": 4, "method": "ping"})
    assert status == 400, body

    status, headers, _ = mcp_request(server.port, "DELETE", session=sid)
    assert status == 200 and header(headers, "mcp-session-id") == [sid], headers
    status, _, _ = mcp_request(server.port, "POST", {"jsonrpc": "2.0", "id": 5, "method": "ping"}, session=sid)
    assert status == 404


def test_the_server_exits_0_on_sigterm_with_a_stream_open(tmp_path):
    s = McpServer("mcp-t", tmp_path).start()
    conn = None
    try:
        status, headers, _ = mcp_request(s.port, "POST", INITIALIZE)
        (sid,) = header(headers, "mcp-session-id")
        mcp_request(s.port, "POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}, session=sid)
        # A GET stream held open, as every live client holds one.
        conn = http.client.HTTPConnection(HOST, s.port, timeout=5)
        conn.request("GET", "/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": sid,
                                             "MCP-Protocol-Version": PROTOCOL_VERSION})
        resp = conn.getresponse()
        assert resp.status == 200 and header(resp.getheaders(), "mcp-session-id") == [sid]
    finally:
        code = s.stop(timeout=10)
        if conn is not None:
            conn.close()
    assert code == 0, s.output()[-2000:]
