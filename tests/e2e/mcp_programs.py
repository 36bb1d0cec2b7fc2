"""The MCP programs of tests/e2e/mcp/ (official SDKs) as processes: a server to start and stop,
clients to run to completion. Every process goes into harness's registry and is bounded in time."""
from __future__ import annotations

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


def run_client(kind: str, url: str, *, calls: int = 3, sessions: int = 1, slow: float = 0.0,
               steps: int = 4, hangup: bool = False, parallel: bool = False,
               timeout: float | None = None) -> tuple[int, list[dict], str]:
    """One run of client.py (kind "python") or client.mjs ("ts"): its status, its session lines
    (parsed), its stderr. Bounded by `timeout` (default from the work asked)."""
    script = CLIENTS[kind]
    if kind == "ts":
        check_ts_sdk()
        cmd = [node_binary(), str(script)]
    else:
        cmd = [sys.executable, str(script)]
    cmd += ["--url", url, "--calls", str(calls), "--sessions", str(sessions), "--steps", str(steps)]
    if slow:
        cmd += ["--slow", str(slow)]
    if hangup:
        cmd.append("--hangup")
    if parallel:
        cmd.append("--parallel")
    per_session = 30.0 + 2 * slow + 2 * calls
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
