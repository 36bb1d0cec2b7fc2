"""The MCP programs of tests/e2e/mcp/ (official SDKs) as processes: a server to start and stop,
clients to run to completion. Every process goes into harness's registry and is bounded in time."""
from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import harness
from harness import HOST, free_port, stop_process, wait_until

MCP_DIR = harness.REPO / "tests" / "e2e" / "mcp"
SERVER_PY = MCP_DIR / "server.py"
CLIENTS = {"python": MCP_DIR / "client.py", "ts": MCP_DIR / "client.mjs"}
# The exact protocol revision both SDKs speak when they issue and honour Mcp-Session-Id.
PROTOCOL_VERSION = "2025-11-25"


def node_binary() -> str:
    return shutil.which("node") or "node"


def check_ts_sdk():
    """The TypeScript client needs its locked SDK installed (`make mcp-sdk`)."""
    if not (MCP_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        raise RuntimeError(f"{MCP_DIR}/node_modules lacks the MCP SDK: run `make mcp-sdk`")


class McpServer:
    """tests/e2e/mcp/server.py on a loopback port, named `name` in every answer."""

    def __init__(self, name: str, workdir: Path, port: int | None = None, resumable: bool = False):
        self.name = name
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.resumable = resumable
        self.proc: subprocess.Popen | None = None
        self.out_path = self.workdir / f"{name}.out"
        self._out = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/mcp"

    def start(self, timeout: float = 20.0) -> "McpServer":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running")
        self._out = open(self.out_path, "ab")
        start_at = self.out_path.stat().st_size
        cmd = [sys.executable, str(SERVER_PY), "--port", str(self.port), "--name", self.name]
        if self.resumable:
            cmd.append("--resumable")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(MCP_DIR), start_new_session=True)
        harness._register(self.proc)
        want = f"ready on {self.address}".encode()

        def ready():
            if self.proc.poll() is not None:
                raise harness.GaveUp(f"{self.name} exited with {self.proc.returncode}: {self.output()[-2000:]}")
            with open(self.out_path, "rb") as f:
                f.seek(start_at)
                return want in f.read()

        try:
            wait_until(ready, timeout, what=f"{self.name}'s ready line")
            wait_until(lambda: harness.http_get(self.port, "/healthz", timeout=1.0)[0] == 200, 5,
                       what=f"{self.name} /healthz")
        except BaseException:
            self.stop()
            raise
        return self

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        stop_process(self.proc, sig=signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (SIGKILL after `timeout`); the exit status."""
        stop_process(self.proc, timeout=timeout)
        if self._out is not None:
            self._out.close()
            self._out = None
        return None if self.proc is None else self.proc.returncode


def run_client(kind: str, url: str, *, calls: int = 3, after: int = 0, sessions: int = 1, slow: float = 0.0,
               steps: int = 4, hangup: bool = False, parallel: bool = False,
               timeout: float | None = None, call_timeout: float | None = None) -> tuple[int, list[dict], str]:
    """One run of client.py (kind "python") or client.mjs ("ts"): its status, its session lines
    (parsed), its stderr. Bounded by `timeout` (default from the work asked)."""
    script = CLIENTS[kind]
    if kind == "ts":
        check_ts_sdk()
        cmd = [node_binary(), str(script)]
    else:
        cmd = [sys.executable, str(script)]
    cmd += ["--url", url, "--calls", str(calls), "--after", str(after), "--sessions", str(sessions),
            "--steps", str(steps)]
    if slow:
        cmd += ["--slow", str(slow)]
    if hangup:
        cmd.append("--hangup")
    if call_timeout is not None:
        cmd += ["--call-timeout", str(call_timeout)]
    if parallel:
        cmd.append("--parallel")
    per_session = 30.0 + 2 * slow + 2 * (calls + after)
    bound = timeout if timeout is not None else per_session * (1 if parallel else sessions) + 15
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=str(MCP_DIR), start_new_session=True, text=True)
    harness._register(proc)
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        err += f"\n(killed after {bound} s)"
    finally:
        harness._unregister(proc)
    lines = []
    for raw in out.splitlines():
        raw = raw.strip()
        if raw:
            try:
                lines.append(json.loads(raw))
            except ValueError:
                err += f"\n(not a JSON line on stdout: {raw[:200]!r})"
    return proc.returncode, lines, err


# --------------------------------------------------------------------------------------------
# raw requests, for what the SDKs do not let a test choose


def mcp_request(port: int, method: str, body: dict | None = None, session: str | None = None,
                timeout: float = 5.0) -> tuple[int, list[tuple[str, str]], str]:
    """One raw request to /mcp with the headers the transport requires; (status, the headers with
    their names as they came on the wire, the whole body)."""
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL_VERSION}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    if session is not None:
        headers["Mcp-Session-Id"] = session
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, "/mcp", body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def header(headers, name):
    return [v for k, v in headers if k.lower() == name]


def sse_messages(body: str) -> list[dict]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
    "clientInfo": {"name": "raw", "version": "0"}}}
