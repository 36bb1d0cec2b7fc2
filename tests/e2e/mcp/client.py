#!/usr/bin/env python3
"""MCP sessions through the official Python SDK's client (`mcp`), for tether's end-to-end tests.

    client.py --url http://127.0.0.1:PORT/mcp --calls N [--slow SECONDS] [--after M] [--sessions S] [--parallel]

Each session: `initialize` (mode="legacy": the SDK's default is the 2026-07-28 protocol, which has
no initialize and no Mcp-Session-Id), N `whoami` calls, and a clean close, which is where the SDK
sends the DELETE that ends the session. With --slow the session also runs one `slow` call of that
many seconds and makes its `whoami` calls while the slow call's SSE response is still streaming
(--hangup: the server closes that response halfway and the SDK resumes it with Last-Event-ID),
then M more `whoami` calls once the slow call has answered.

One JSON line per session, as it ends:
  {"session": the Mcp-Session-Id the client sent, "results": [the tools' JSON answers, in order],
   "errors": [...], "ids_sent": [every distinct id sent], "http": ["POST 200", "GET 200", ...],
   "progress": notifications received, "logs": log messages received}
The exit status is 1 when any session had an error (the lines still say what happened), 2 when
the arguments are wrong.
"""
from __future__ import annotations

import argparse
import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

MAX_CALLS = 1000
MAX_SESSIONS = 1000
MAX_SLOW_S = 60.0
SESSION_HEADER = "mcp-session-id"


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def parse(tool: str, result) -> dict:
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    if result.is_error:
        raise RuntimeError(f"{tool} answered an error: {' '.join(texts)}")
    if len(texts) != 1:
        raise RuntimeError(f"{tool} answered {len(texts)} text blocks, not 1")
    return json.loads(texts[0])


async def session(args) -> dict:
    out = {"session": None, "results": [], "errors": [], "ids_sent": [], "http": [],
           "progress": 0, "logs": 0}

    async def on_request(request: httpx2.Request):
        sid = request.headers.get(SESSION_HEADER)
        if sid is not None and sid not in out["ids_sent"]:
            out["ids_sent"].append(sid)
        if out["session"] is None and sid is not None:
            out["session"] = sid

    async def on_response(response: httpx2.Response):
        out["http"].append(f"{response.request.method} {response.status_code}")

    async def on_progress(progress, total, message):
        out["progress"] += 1

    async def on_log(params):
        out["logs"] += 1

    slow_s = min(max(args.slow or 0.0, 0.0), MAX_SLOW_S)
    call_timeout = args.call_timeout if args.call_timeout is not None else 30.0 + slow_s
    # Proxies from the environment would take loopback traffic elsewhere (trust_env=False); a read
    # bound longer than the server's SSE keep-alive pings, so an idle GET stream stays open.
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=60.0), trust_env=False,
                              event_hooks={"request": [on_request], "response": [on_response]})
    try:
        with anyio.fail_after(args.timeout):
            async with http, Client(streamable_http_client(args.url, http_client=http), mode="legacy",
                                    logging_callback=on_log, read_timeout_seconds=call_timeout,
                                    cache=None) as client:
                slow_result = []

                async def slow_call():
                    try:
                        arguments = {"seconds": slow_s, "steps": args.steps}
                        if args.hangup:
                            arguments["hangup"] = True
                        r = await client.call_tool("slow", arguments, progress_callback=on_progress)
                        slow_result.append(parse("slow", r))
                    except Exception as exc:  # noqa: BLE001 - reported in the session's line
                        out["errors"].append(f"slow: {describe(exc)}")

                async def whoami():
                    try:
                        out["results"].append(parse("whoami", await client.call_tool("whoami", {})))
                    except Exception as exc:  # noqa: BLE001 - reported in the session's line
                        out["errors"].append(f"whoami: {describe(exc)}")

                async with anyio.create_task_group() as tg:
                    if slow_s:
                        tg.start_soon(slow_call)
                    # The short calls spread over the slow call's span, so they reach the server
                    # while its response is still streaming.
                    pace = slow_s / (args.calls + 1) if slow_s else 0.0
                    for _ in range(args.calls):
                        if pace:
                            await anyio.sleep(pace)
                        await whoami()
                out["results"].extend(slow_result)
                for _ in range(args.after):
                    await whoami()
    except BaseException as exc:  # noqa: BLE001 - a session's failure is its line's, not the run's
        if isinstance(exc, KeyboardInterrupt):
            raise
        out["errors"].append(describe(exc) if str(exc) else f"{type(exc).__name__} (after {args.timeout} s?)")
    if out["session"] is not None and "DELETE 200" not in out["http"]:
        out["errors"].append("the session was not ended: no DELETE answered 200")
    return out


async def run(args) -> int:
    failed = False

    async def one():
        nonlocal failed
        line = await session(args)
        failed = failed or bool(line["errors"])
        print(json.dumps(line), flush=True)

    if args.parallel:
        async with anyio.create_task_group() as tg:
            for _ in range(args.sessions):
                tg.start_soon(one)
    else:
        for _ in range(args.sessions):
            await one()
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--after", type=int, default=0, help="whoami calls after the slow call answered")
    ap.add_argument("--slow", type=float, default=0.0, help="seconds of one slow call per session")
    ap.add_argument("--steps", type=int, default=4, help="progress notifications of the slow call")
    ap.add_argument("--hangup", action="store_true", help="the server closes the slow call's stream halfway")
    ap.add_argument("--sessions", type=int, default=1)
    ap.add_argument("--parallel", action="store_true", help="run the sessions at the same time")
    ap.add_argument("--timeout", type=float, default=None, help="bound on one session, seconds")
    ap.add_argument("--call-timeout", type=float, default=None,
                    help="bound on one call, seconds (default 30 + --slow)")
    args = ap.parse_args()
    if not (0 <= args.calls <= MAX_CALLS and 0 <= args.after <= MAX_CALLS and 1 <= args.sessions <= MAX_SESSIONS
            and 0 <= args.slow <= MAX_SLOW_S and 1 <= args.steps <= 600):
        ap.error(f"--calls and --after 0..{MAX_CALLS}, --sessions 1..{MAX_SESSIONS}, --slow 0..{MAX_SLOW_S}, --steps 1..600")
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:", "http://[::1]:")):
        ap.error("--url must be on this machine's loopback")
    if args.timeout is None:
        args.timeout = 30.0 + 2 * args.slow + 2 * (args.calls + args.after)
    return anyio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
