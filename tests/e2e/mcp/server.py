#!/usr/bin/env python3
"""A stateful MCP server (Streamable HTTP, the 2025-11-25 handshake era) for tether's end-to-end tests.

Built on the official Python SDK (`mcp`, pinned in tests/requirements.txt): the SDK's session
manager issues `mcp-session-id` in its answer to `initialize`, keeps each session in this process's
memory, answers 404 to a session id it does not hold (never issued, ended by DELETE, or lost in a
restart), serves the GET that opens a session's server-sent-events stream and the DELETE that ends
a session. The MCP endpoint is /mcp; GET /healthz answers 200 for Envoy's health checks.

Tools:
  whoami            {"tool": "whoami", "server": NAME, "session": ID, "count": N}
  slow(seconds, steps, hangup=false)
                    sends `steps` progress notifications (when the call asked for progress) and as
                    many log messages over the call's SSE response, spread over `seconds` (at most
                    60), then answers {"tool": "slow", "server": NAME, "session": ID, "count": N}.
                    With `hangup` (needs --resumable) the server closes the call's SSE response
                    halfway; the client resumes it with a GET carrying Last-Event-ID.
`count` is the session's counter, raised by every tool call of that session: the calls of one
session number 1, 2, 3... on the server that issued its id. Another server refuses them (404): it
never issued that id.

Usage: server.py --port PORT --name NAME [--resumable]. Listens on 127.0.0.1 only, prints
`ready on 127.0.0.1:PORT` once it accepts connections, exits 0 on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
import warnings
from collections import OrderedDict

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.requests import Request
from starlette.responses import PlainTextResponse

HOST = "127.0.0.1"
PATH = "/mcp"
MAX_SLOW_S = 60.0
MAX_STEPS = 600
# Bounds on what this process keeps for sessions that ended without a word (a client killed before
# its DELETE): the oldest entries go first.
MAX_COUNTERS = 100_000
MAX_EVENTS = 100_000
# The SSE `retry` the server suggests when streams are resumable: how long a client whose stream
# was closed waits before it resumes with Last-Event-ID.
RETRY_MS = 300

# Log messages are the handshake era's way (deprecated in 2026-07-28) to say something on a call's
# stream; the era this server speaks still defines them.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)


class MemoryEventStore(EventStore):
    """Every event the server sent, by id, so a client can resume a stream after the last one it saw."""

    def __init__(self, limit: int = MAX_EVENTS):
        self.limit = limit
        self.events: OrderedDict[str, tuple[str, object]] = OrderedDict()

    async def store_event(self, stream_id, message):
        event_id = uuid.uuid4().hex
        self.events[event_id] = (stream_id, message)
        while len(self.events) > self.limit:
            self.events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        if last_event_id not in self.events:
            return None
        stream_id = self.events[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(self.events.items()):
            # Priming events (no message) only mark a place in the stream: nothing to send again.
            if after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
            if event_id == last_event_id:
                after = True
        return stream_id


def build(name: str, resumable: bool):
    mcp = MCPServer(name, log_level="WARNING")
    counters: OrderedDict[str, int] = OrderedDict()

    def session_of(ctx: Context) -> str:
        # The SDK serves a tool call only when this header names a session it holds, so its value
        # is the id as this server issued it (the SDK gives tools no other handle on the session).
        headers = ctx.headers or {}
        sid = headers.get("mcp-session-id")
        if not sid:
            raise ValueError("this server is stateful: the call came without an mcp-session-id")
        return sid

    def bump(sid: str) -> int:
        count = counters.pop(sid, 0) + 1
        counters[sid] = count
        while len(counters) > MAX_COUNTERS:
            counters.popitem(last=False)
        return count

    @mcp.tool(structured_output=False)
    async def whoami(ctx: Context) -> str:
        """Names this server and the session, and counts the session's calls."""
        sid = session_of(ctx)
        return json.dumps({"tool": "whoami", "server": name, "session": sid, "count": bump(sid)})

    @mcp.tool(structured_output=False)
    async def slow(ctx: Context, seconds: float = 2.0, steps: int = 4, hangup: bool = False) -> str:
        """Streams `steps` progress notifications and log messages over `seconds`, then answers."""
        sid = session_of(ctx)
        seconds = min(max(float(seconds), 0.0), MAX_SLOW_S)
        steps = min(max(int(steps), 1), MAX_STEPS)
        for i in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            # A no-op when the call did not ask for progress (no progressToken): the log message
            # still rides the call's stream.
            await ctx.report_progress(i, steps, f"step {i} of {steps}")
            await ctx.info(f"{name}: step {i} of {steps}")
            if hangup and i == (steps + 1) // 2:
                await ctx.close_sse_stream()
        return json.dumps({"tool": "slow", "server": name, "session": sid, "count": bump(sid)})

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request):
        return PlainTextResponse("ok")

    return mcp.streamable_http_app(
        streamable_http_path=PATH,
        host=HOST,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=RETRY_MS if resumable else None,
    )


async def serve(port: int, app) -> None:
    server = uvicorn.Server(uvicorn.Config(
        app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="on",
        # A session's GET stream stays open as long as its client lives: without a bound the
        # shutdown after SIGTERM would wait for every client to leave.
        timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started and not task.done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    if server.started:
        print(f"ready on {HOST}:{port}", flush=True)
    await task


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--resumable", action="store_true",
                    help="keep every event sent, so streams can be resumed with Last-Event-ID")
    args = ap.parse_args()
    # uvicorn handles SIGTERM itself (a graceful shutdown), then raises the signal again with the
    # handler that was there before: this one, so the process ends with status 0 either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve(args.port, build(args.name, args.resumable)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
