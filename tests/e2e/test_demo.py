"""`make run`, the demo of the README: it serves sticky sessions, and Ctrl-C (SIGINT to its process
group, as a terminal sends it) or a TERM to the group stops it cleanly with nothing left
running. Before: its recipe's `trap 'kill 0'` signalled itself again and the shell died with
"Segmentation fault"."""
import os
import signal
import subprocess
import time

import pytest

import harness
from harness import COOKIE, free_port, wait_until


def group_alive(pgid: int) -> list[str]:
    """The processes still in process group `pgid`."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:120])
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_make_run_serves_and_stops_cleanly(tmp_path, sig):
    port, admin = free_port(), free_port()
    backends = [free_port() for _ in range(3)]
    args = f"--port {port} --admin-port {admin} --backend-ports {','.join(map(str, backends))}"
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen(["make", "-s", "run", f"DEMO_ARGS={args}"], cwd=harness.REPO,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    harness._register(proc)
    pgid = proc.pid
    try:
        wait_until(lambda: harness.http_get(admin, "/ready", timeout=1)[1].strip() == "LIVE",
                   120, interval=0.2, what="the demo's Envoy")
        wait_until(lambda: harness.http_get(port, "/", timeout=2)[0] == 200, 20,
                   what="the demo answering")
        c = harness.Client(port)
        first = c.request("/")
        assert first.set_cookie(COOKIE) is not None, first
        for _ in range(4):
            assert c.request("/").backend == first.backend
        os.killpg(pgid, sig)
        proc.wait(timeout=20)
        try:
            wait_until(lambda: not group_alive(pgid), 10, interval=0.2, what="the demo gone")
        except TimeoutError:
            pytest.fail(f"still running after the demo stopped: {group_alive(pgid)}")
    finally:
        if proc.poll() is None or group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        harness._unregister(proc)
        log.close()
    output = (tmp_path / "make-run.log").read_text(errors="replace")
    assert "Segmentation fault" not in output, output[-2000:]
    assert "tether demo" in output, output[-2000:]
    assert "a process exited" not in output, output[-2000:]
    time.sleep(0.2)
    for p in [port, admin, *backends]:
        with pytest.raises(OSError):
            harness.http_get(p, "/", timeout=0.5)
