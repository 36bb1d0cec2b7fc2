"""WebSocket and long-polling clients through the shipped envoy/envoy.yaml: an upgrade is let through
(it was refused with 403 before `upgrade_configs`), it reaches the session's endpoint, and the
session carries on across it. The client is the `websockets` library."""
import asyncio
import json

from websockets.asyncio.client import connect

from harness import COOKIE, HOST, pinned_client


async def talk(port: int, cookie: str | None, messages: list[str]) -> tuple[dict, list[str], dict]:
    """Opens a WebSocket with `cookie`; the backend's greeting, its echoes, the 101's headers."""
    headers = {"Cookie": cookie} if cookie else {}
    async with asyncio.timeout(10):
        async with connect(f"ws://{HOST}:{port}/socket", additional_headers=headers) as ws:
            hello = json.loads(await ws.recv())
            echoes = []
            for m in messages:
                await ws.send(m)
                echoes.append(await ws.recv())
            return hello, echoes, dict(ws.response.headers)


def test_a_websocket_reaches_the_sessions_endpoint_and_the_session_carries_on(env):
    c, _ = pinned_client(env, "backend-3")
    token = c.jar[COOKIE]
    for _ in range(3):
        hello, echoes, headers = asyncio.run(
            talk(env.port, f"a=1; {COOKIE}={token}", ["one", "two"]))
        assert hello["backend"] == "backend-3", hello
        assert hello["cookie"] == "a=1", f"tether's cookie reached the backend: {hello}"
        assert echoes == ["backend-3: one", "backend-3: two"]
        assert "set-cookie" not in {k.lower() for k in headers}, headers
    r = c.request("/after-the-socket")
    assert r.status == 200 and r.backend == "backend-3" and r.header("set-cookie") == [], r
    assert c.jar[COOKIE] == token


def test_a_websocket_that_starts_a_session_gets_its_cookie(env):
    hello, _, headers = asyncio.run(talk(env.port, None, []))
    cookies = [v for k, v in headers.items() if k.lower() == "set-cookie"]
    assert cookies and cookies[0].startswith(f"{COOKIE}="), headers
    token = cookies[0].split(";")[0].split("=", 1)[1]
    c = env.client()
    c.jar[COOKIE] = token
    for _ in range(3):
        r = c.request("/")
        assert r.backend == hello["backend"] and r.header("set-cookie") == [], r
