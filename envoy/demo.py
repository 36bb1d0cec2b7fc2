#!/usr/bin/env python3
"""The demo `make run` starts: three demo backends and Envoy with envoy/envoy.yaml, in the
foreground, until Ctrl-C (or SIGTERM), which stops every process it started and nothing else.

With the default ports the config is envoy/envoy.yaml itself; other ports (`--port`,
`--admin-port`, `--backend-ports`) run a copy of it with only those changed. `--native` runs
envoy/native.yaml, the dynamic module (`make run NATIVE=1`), instead.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_PORTS = (10000, 9901, (8081, 8082, 8083))


def config_for(port, admin_port, backend_ports, native=False) -> Path:
    """envoy/envoy.yaml (or native.yaml), or a copy of it on other ports."""
    shipped = HERE / ("native.yaml" if native else "envoy.yaml")
    if (port, admin_port, tuple(backend_ports)) == DEFAULT_PORTS:
        return shipped
    import yaml  # from the venv `make run` sets up

    cfg = yaml.safe_load(shipped.read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster["name"] == "app":
            cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": p}}}}
                for p in backend_ports]}]
    out = Path(tempfile.mkdtemp(prefix="tether-demo-")) / "envoy.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def stop(procs, timeout=5.0):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envoy", required=True, help="the Envoy binary")
    ap.add_argument("--port", type=int, default=DEFAULT_PORTS[0])
    ap.add_argument("--admin-port", type=int, default=DEFAULT_PORTS[1])
    ap.add_argument("--backend-ports", default=",".join(map(str, DEFAULT_PORTS[2])))
    ap.add_argument("--native", action="store_true",
                    help="the dynamic module (target/native/libtether.so, envoy/native.yaml)")
    args = ap.parse_args()
    backend_ports = [int(p) for p in args.backend_ports.split(",")]
    config = config_for(args.port, args.admin_port, backend_ports, args.native)
    env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(REPO / "target" / "native"))

    # Ctrl-C reaches every process of the terminal's group, these included; SIGTERM may reach
    # this one only. Either way this process stops them and waits, once.
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    procs = []
    try:
        for i, p in enumerate(backend_ports, 1):
            procs.append(subprocess.Popen(
                [sys.executable, str(HERE / "backend.py"), "--port", str(p),
                 "--name", f"backend-{i}"], cwd=REPO))
        print(f"\ntether demo: Envoy on http://127.0.0.1:{args.port} (admin "
              f"http://127.0.0.1:{args.admin_port}), backends on 127.0.0.1:"
              f"{','.join(map(str, backend_ports))}\n"
              "Try it (a cookie jar keeps the session; every answer names the same backend):\n"
              f"  for i in 1 2 3 4 5; do curl -s -b /tmp/tether.jar -c /tmp/tether.jar "
              f"http://127.0.0.1:{args.port}/ -o /dev/null -w '%{{header_json}}\\n' | "
              "grep -o 'backend-[0-9]'; done\n"
              "Without the jar every request is a new session and round robin spreads them:\n"
              f"  for i in 1 2 3; do curl -s http://127.0.0.1:{args.port}/ -D - -o /dev/null | "
              "grep -iE 'x-backend|set-cookie'; done\n"
              "Ctrl-C stops everything.\n", flush=True)
        envoy = subprocess.Popen(
            [args.envoy, "-c", str(config), "--concurrency", "2", "--disable-hot-restart",
             "--log-level", "warn", "--component-log-level", "wasm:info,dynamic_modules:info"],
            cwd=REPO, env=env)
        procs.append(envoy)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        stop(procs)
    # A Ctrl-C can stop a child a moment before this process's own handler has run.
    time.sleep(0.3)
    if not stopping:
        dead = [p.args[1] if len(p.args) > 1 else p.args[0] for p in procs if p.returncode]
        print(f"tether demo: a process exited: {dead}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
