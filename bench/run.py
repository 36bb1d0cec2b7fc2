#!/usr/bin/env python3
"""tether's benchmark: what the filter costs Envoy, next to Envoy's own sticky sessions.

`make bench` runs it (`make bench BENCH_ARGS=--quick` for a smoke run of about a minute).

Everything runs on 127.0.0.1, on ports the kernel hands out:

* the upstream is one Envoy answering `direct_response` 200 on three listeners (bench/backend.yaml),
  so the upstream costs little and is not Python;
* the front Envoy is envoy/envoy.yaml as shipped (route, retry policy, `app` cluster with the
  override_host policy, health checks, upstream header_mutation), built and started by the
  end-to-end tests' harness (tests/e2e/harness.py, which starts the upstream too), with only the
  HTTP filter changed per variant: none, Envoy's stateful_session cookie filter
  (bench/native-filter.yaml), or tether in one of its session types. One front Envoy runs at a
  time, with one worker thread (`--concurrency 1`);
* load comes from wrk (bench/wrk.lua): a fixed number of keep-alive requests over several
  connections;
* the cost is the front Envoy's CPU time (utime+stime from /proc/PID/stat) over the measured run,
  divided by the requests it completed (its own `downstream_rq_completed` counter), in interleaved
  rounds: round r runs every variant once, the order rotated by r.

Then the binding table at scale (learn from a header, max_sessions = 2N, N ids filled by a small
pipelined HTTP/1.1 client), the module's size and the time Envoy takes to load it.

Results: bench/results/latest.json and latest.svg, and the table between the markers in
BENCHMARKS.md (`--quick` writes bench/results/quick.* and leaves BENCHMARKS.md alone).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
import html
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import harness  # noqa: E402  (tests/e2e/harness.py: Envoy processes, config, free ports, HTTP client)
import yaml  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WRK_LUA = BENCH / "wrk.lua"
# Floors written by hand in WebAssembly text, assembled with Binaryen's wasm-as: the cheapest
# proxy-wasm filter there is (bench/empty.wat), and the cheapest sticky one (bench/sticky.wat).
WAT_MODULES = {"empty": BENCH / "empty.wat", "sticky": BENCH / "sticky.wat"}
STICKY_WAT_COOKIE = "s"  # the cookie bench/sticky.wat sets and reads
# bench/sticky.wat written in Rust with the proxy-wasm SDK (bench/sticky-sdk, `make
# build-sticky-sdk`): the same calls, the same cookie, the floor of any filter on the SDK.
# Built `--features sealed`, its cookie is an authenticated token: the floor of any filter on the
# SDK whose cookie reveals and lets forge nothing, as the mission asks of tether's tokens.
SDK_MODULES = {"sticky-sdk": REPO / "target" / "wasm32-wasip1" / "release" / "tether_sticky_sdk.wasm",
               "sticky-sealed": REPO / "target" / "wasm32-wasip1" / "release" / "tether_sticky_sealed.wasm"}
WASM_AS = REPO / ".tools" / "node_modules" / ".bin" / "wasm-as"
MARK_START = "<!-- results:start -->"
MARK_END = "<!-- results:end -->"
FRONT_CONCURRENCY = 1
RSS_NOISE_KIB = 4096
TARGETS = {"returning_ratio_max": 1.10, "new_ratio_max": 1.25, "scale_ratio_max": 1.2,
           # issue #14 restated the memory target: 120 B per binding at 1M, both builds
           "bytes_per_binding_max": 120, "module_kib_max": 250, "mcp_vs_header_max": 1.10,
           # issue #14: the native build next to Envoy's own filter, the Wasm build next to
           # the cheapest proxy-wasm sticky filter
           "native_cookie_max": 1.05, "native_other_max": 1.10,
           "wasm_vs_sticky_max": 1.05, "wasm_new_vs_sticky_max": 1.10,
           "native_bytes_per_binding_max": 120}


def log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# processes: the harness starts and stops them (its registry stops whatever is left at exit)


def _on_term(signum, frame):  # SIGTERM: unwind through every finally, then atexit
    raise SystemExit(128 + signum)


# --pin: the measured (front) Envoy alone on one CPU, the load generator and the backend on the
# others, so that which of them shares a core with which is no longer a matter of chance.
PIN: dict[str, set[int]] = {}

# No log line per request in a measured Envoy: its CPU time is the filters', not the logger's.
ENVOY_LOG_ARGS = ("--log-level", "warn")
# Start to /ready is the module's load time (tether minus no filter): polled finely enough that
# the poll interval is not what is measured.
READY_POLL_S = 0.005


def _pinned(role: str):
    cpus = PIN.get(role)
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def bench_envoy(workdir: Path, name: str, role: str, backend_ports=(), **kw) -> harness.Envoy:
    """The harness's Envoy with the bench's logging, readiness poll and CPU pinning."""
    return harness.Envoy(workdir, list(backend_ports), name=name, cpus=PIN.get(role),
                         log_args=ENVOY_LOG_ARGS, ready_interval=READY_POLL_S, **kw)


# --------------------------------------------------------------------------------------------
# measurements of one Envoy process

def cpu_ticks(envoy: harness.Envoy) -> int:
    with open(f"/proc/{envoy.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def sched_ns(envoy: harness.Envoy) -> int:
    """CPU time of all threads in ns (schedstat), a finer cross-check of the ticks."""
    total = 0
    task = f"/proc/{envoy.proc.pid}/task"
    for tid in os.listdir(task):
        try:
            with open(f"{task}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return total


def rss_kib(envoy: harness.Envoy) -> int:
    return harness.rss_kb(envoy.proc.pid)


def counter(envoy: harness.Envoy, name: str) -> int:
    value = envoy.stats(f"^{re.escape(name)}$").get(name)
    if value is None:
        raise RuntimeError(f"{envoy.name}: no counter {name}")
    return value


# --------------------------------------------------------------------------------------------
# configurations

def backend_config(admin_port: int, ports: list[int]) -> dict:
    tmpl = yaml.safe_load((BENCH / "backend.yaml").read_text())
    tmpl["admin"]["address"]["socket_address"]["port_value"] = admin_port
    lst = tmpl["static_resources"]["listeners"][0]
    listeners = []
    for i, port in enumerate(ports, 1):
        item = copy.deepcopy(lst)
        item["name"] = f"backend-{i}"
        item["address"]["socket_address"]["port_value"] = port
        hcm = item["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["route_config"]["virtual_hosts"][0]["response_headers_to_add"][0]["header"]["value"] = f"backend-{i}"
        listeners.append(item)
    tmpl["static_resources"]["listeners"] = listeners
    return tmpl


def _http_filters(cfg: dict) -> list:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["http_filters"]


def front_envoy(workdir: Path, name: str, filter_kind: str, plugin, backend_ports: list[int],
                wasm_path: Path | None = None) -> harness.Envoy:
    """envoy/envoy.yaml as shipped, as the harness builds it, only the HTTP filter changed
    (none / native / tether / a floor)."""

    def mutate(cfg):
        filters = _http_filters(cfg)
        idx = [i for i, f in enumerate(filters) if f.get("name") == harness.FILTER]
        if len(idx) != 1:
            raise ValueError("expected the tether filter once in envoy/envoy.yaml")
        if filter_kind == "none":
            del filters[idx[0]]
        elif filter_kind in WAT_MODULES or filter_kind in SDK_MODULES:
            filters[idx[0]]["typed_config"]["config"]["vm_config"]["vm_id"] = filter_kind
        elif filter_kind == "native":
            filters[idx[0]] = yaml.safe_load((BENCH / "native-filter.yaml").read_text())
        elif filter_kind == "floor-native":
            # bench/floor: the cheapest sticky dynamic module on tether's ABI crate.
            filters[idx[0]]["typed_config"] = {
                "@type": harness.NATIVE_FILTER_TYPE, "dynamic_module_config": {"name": "floor"},
                "filter_name": "floor",
                "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": plugin or ""}}
        elif filter_kind == "tether-native":
            # tether's dynamic module with the same plugin JSON (envoy/native.yaml's filter).
            value = filters[idx[0]]["typed_config"]["config"]["configuration"]["value"]
            filters[idx[0]]["typed_config"] = harness.native_filter_config(value)

    return bench_envoy(workdir, name, "front", backend_ports, concurrency=FRONT_CONCURRENCY,
                       plugin_config=plugin if filter_kind in TETHER_KINDS else harness.SHIPPED,
                       wasm_path=wasm_path, mutate=mutate)


BASE_PLUGIN = {"absolute_timeout": "24h", "idle_timeout": "30m",
               "upstream": {"host_header": "x-tether-host"}}


def plugin(**kw) -> dict:
    p = copy.deepcopy(BASE_PLUGIN)
    p.update(kw)
    return p


LEARN_HEADER = "x-session-id"
TOKEN_HEADER = "x-tether-session"
MCP_HEADER = "mcp-session-id"
# The plugin of each session type measured both returning and new.
HEADER_PLUGIN = plugin(type="header", session_name=TOKEN_HEADER)
MCP_PLUGIN = plugin(type="learn", learn_from="response_header", session_name=MCP_HEADER)
LEARN_PLUGIN = plugin(type="learn", learn_from="header", session_name=LEARN_HEADER)

# key: (label, filter kind, plugin config, load shape)
VARIANTS = {
    "none": ("no filter", "none", None, "plain"),
    "native": ("native stateful_session, returning", "native", None, "native-returning"),
    "native-new": ("native stateful_session, new session", "native", None, "plain"),
    "cookie": ("tether cookie, returning", "tether", harness.SHIPPED, "cookie-returning"),
    "cookie-new": ("tether cookie, new session", "tether", harness.SHIPPED, "plain"),
    "header": ("tether header, returning", "tether", HEADER_PLUGIN, "header-returning"),
    "header-new": ("tether header, new session", "tether", HEADER_PLUGIN, "plain"),
    # Sessions the backend starts (MCP): the envelope opened, the pin set and the backend's id
    # handed back on the request; the envelope handed back on the answer, which names the session.
    "mcp": ("tether MCP envelope, returning", "tether", MCP_PLUGIN, "mcp-returning"),
    # Every answer names a session the request did not carry: an envelope sealed each time.
    "mcp-new": ("tether MCP envelope, new session", "tether", MCP_PLUGIN, "plain"),
    "learn": ("tether learn (header), returning", "tether", LEARN_PLUGIN, "learn-returning"),
    "learn-new": ("tether learn (header), new id", "tether", LEARN_PLUGIN, "learn-new"),
    "source-ip": ("tether source_ip", "tether", plugin(type="source_ip"), "source-ip"),
    # The floor of any proxy-wasm filter here: a module whose callbacks return at once
    # (bench/empty.wat), called back for every request like tether.
    "wasm-empty": ("empty proxy-wasm filter (floor of any wasm filter)", "empty", None, "plain"),
    # The floor of any proxy-wasm sticky filter (bench/sticky.wat): what the native filter does,
    # with only the host calls that needs (read Cookie, set the override header; read
    # upstream.address, Set-Cookie when the endpoint changed), the address in clear, no crypto,
    # no expiry, no status check.
    "wasm-sticky": ("cheapest sticky wasm filter (floor of session work), returning", "sticky",
                    None, "sticky-returning"),
    "wasm-sticky-new": ("cheapest sticky wasm filter (floor of session work), new session",
                        "sticky", None, "plain"),
    # The same filter written with the proxy-wasm Rust SDK tether must use (bench/sticky-sdk):
    # what it costs above bench/sticky.wat is the SDK's share, no SDK-based filter goes below it.
    "wasm-sticky-sdk": ("cheapest sticky wasm filter written with the proxy-wasm SDK, returning",
                        "sticky-sdk", None, "sticky-returning"),
    "wasm-sticky-sdk-new": ("cheapest sticky wasm filter written with the proxy-wasm SDK, new session",
                            "sticky-sdk", None, "plain"),
    # The same with its cookie sealed (XChaCha20-Poly1305, as tether's tokens): what an
    # authenticated cookie costs on the SDK at the least.
    "wasm-sticky-sealed": ("cheapest sticky wasm filter on the SDK with a sealed cookie, returning",
                           "sticky-sealed", None, "sticky-returning"),
    "wasm-sticky-sealed-new": ("cheapest sticky wasm filter on the SDK with a sealed cookie, new session",
                               "sticky-sealed", None, "plain"),
    # The floor of any sticky dynamic module on tether's ABI crate (bench/floor): the same
    # session work as bench/sticky.wat, through the same hooks and calls tether's native build
    # uses (the override-host call instead of a header).
    "native-floor": ("cheapest sticky dynamic module (native floor of session work), returning",
                     "floor-native", None, "sticky-returning"),
    "native-floor-new": ("cheapest sticky dynamic module (native floor of session work), new session",
                         "floor-native", None, "plain"),
    # The same, also taking its cookie out of the request, as tether's cookie sessions do on
    # every returning request (Envoy's filter leaves its cookie in).
    "native-floor-strip": ("cheapest sticky dynamic module, taking its cookie out, returning",
                           "floor-native", "strip", "sticky-returning"),
    # tether disabled on the route: the per-route lookup (the `xds.route_name` property) and
    # the removal of client-sent routing headers, no session work.
    "route-off": ("tether loaded, disabled on the route", "tether",
                  plugin(routes={"app": {"disabled": True}}), "plain"),
}
# tether's native build (`make build-native`), the same plugins and loads as the Wasm rows.
TETHER_KINDS = ("tether", "tether-native")
NATIVE_BUILD = {f"n-{key}": (f"native build: {label}", "tether-native", cfg, shape)
                for key, (label, kind, cfg, shape) in VARIANTS.items()
                if kind == "tether" and key != "route-off"}
VARIANTS.update(NATIVE_BUILD)
STICKY = {"native", "cookie", "header", "mcp", "learn", "source-ip", "wasm-sticky", "wasm-sticky-sdk",
          "wasm-sticky-sealed",
          "native-floor", "native-floor-strip", "n-cookie", "n-header", "n-mcp", "n-learn", "n-source-ip"}
LEARN_IDS = 64  # the fixed set of returning ids of the `learn` variant


# --------------------------------------------------------------------------------------------
# load

def run_wrk(port: int, limit: int, connections: int, headers=(), ids=None,
            max_seconds: float = 120.0) -> dict:
    """wrk: `limit` keep-alive requests, then stop. ids = (header, fmt, span, count, stride, offset)."""
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{int(max_seconds)}s", "--timeout", "5s",
           "-s", str(WRK_LUA)]
    for h in headers:
        cmd += ["-H", h]
    cmd += [f"http://{harness.HOST}:{port}/", "--", str(limit)]
    if ids is None:
        cmd += ["fixed"]
    else:
        cmd += ["ids"] + [str(x) for x in ids]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_pinned("load"))
    harness._register(proc)
    try:
        out, _ = proc.communicate(timeout=max_seconds + 30)
    finally:
        harness.stop_process(proc, timeout=10.0)
    text = out.decode("utf-8", "replace")
    m = re.search(r"^WRKJSON (\{.*\})$", text, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result:\n{text}")
    res = json.loads(m.group(1))
    res["errors"] = sum(v for k, v in res.items() if k.startswith("err_"))
    return res


def measure(envoy: harness.Envoy, fn) -> dict:
    """Run fn() and charge the front Envoy's CPU time to the requests it completed meanwhile."""
    rq0 = counter(envoy, "http.ingress.downstream_rq_completed")
    t0, n0, w0 = cpu_ticks(envoy), sched_ns(envoy), time.monotonic()
    gen = fn()
    t1, n1, w1 = cpu_ticks(envoy), sched_ns(envoy), time.monotonic()
    rq1 = counter(envoy, "http.ingress.downstream_rq_completed")
    requests = rq1 - rq0
    if requests <= 0:
        raise RuntimeError("no request completed")
    return {
        "requests": requests,
        "cpu_us_per_req": (t1 - t0) * 1e6 / CLK_TCK / requests,
        "sched_us_per_req": (n1 - n0) / 1e3 / requests,
        "cpu_ticks": t1 - t0,
        "wall_s": w1 - w0,
        "gen": gen,
    }


class PipelinedFill:
    """A small pipelined HTTP/1.1 client: GET / with `header: fmt % i` for i in [start, start+n),
    over several keep-alive connections, `depth` requests in flight on each. Bounded in time."""

    def __init__(self, port: int, header: str, fmt: str, connections: int = 8, depth: int = 64):
        self.port, self.header, self.fmt = port, header, fmt
        self.connections, self.depth = connections, depth

    def run(self, start: int, n: int, time_cap: float) -> dict:
        t0 = time.monotonic()
        deadline = t0 + time_cap
        sel = selectors.DefaultSelector()
        socks = []
        nxt, end = start, start + n
        done = bad = 0
        prefix = f"GET / HTTP/1.1\r\nhost: bench\r\n{self.header}: ".encode()
        try:
            for _ in range(self.connections):
                s = socket.create_connection((harness.HOST, self.port), timeout=10)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks.append(s)
                sel.register(s, selectors.EVENT_READ, {"buf": b"", "out": 0})

            def send_batch(s, st):
                nonlocal nxt
                if nxt >= end or time.monotonic() > deadline:
                    return
                k = min(self.depth, end - nxt)
                s.sendall(b"".join(prefix + (self.fmt % i).encode() + b"\r\n\r\n"
                                   for i in range(nxt, nxt + k)))
                nxt += k
                st["out"] = k

            for s in socks:
                send_batch(s, sel.get_key(s).data)
            hard_stop = deadline + 30
            while any(sel.get_key(s).data["out"] for s in socks):
                if time.monotonic() > hard_stop:
                    raise RuntimeError("fill: responses did not arrive")
                for key, _ in sel.select(timeout=1.0):
                    s, st = key.fileobj, key.data
                    chunk = s.recv(262144)
                    if not chunk:
                        raise RuntimeError("fill: connection closed by Envoy")
                    buf = st["buf"] + chunk
                    pos = 0
                    while True:
                        h = buf.find(b"\r\n\r\n", pos)
                        if h < 0:
                            break
                        head = buf[pos:h].lower()
                        m = re.search(rb"\r\ncontent-length: *(\d+)", head)
                        if not m:
                            raise RuntimeError(f"fill: response without content-length: {head[:200]!r}")
                        total = h + 4 + int(m.group(1))
                        if total > len(buf):
                            break
                        if head[9:12] != b"200":
                            bad += 1
                        done += 1
                        st["out"] -= 1
                        pos = total
                    st["buf"] = buf[pos:]
                    if st["out"] == 0:
                        send_batch(s, st)
        finally:
            for s in socks:
                try:
                    sel.unregister(s)
                except (KeyError, ValueError):
                    pass
                s.close()
            sel.close()
        wall = time.monotonic() - t0
        return {"sent": nxt - start, "completed": done, "non_200": bad, "wall_s": wall,
                "rate_per_s": done / wall if wall > 0 else 0.0, "capped": nxt < end}


# --------------------------------------------------------------------------------------------
# the variants

class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.backend_ports = [harness.free_port() for _ in range(3)]
        self.backend: harness.Envoy | None = None
        self.checks: dict[str, dict] = {}

    def wat_module(self, kind: str) -> Path:
        """bench/<kind>.wat assembled (once per run) into the run's directory."""
        out = self.workdir / f"{kind}.wasm"
        if not out.exists():
            subprocess.run([str(WASM_AS), str(WAT_MODULES[kind]), "-o", str(out)], check=True,
                           capture_output=True, timeout=60)
        return out

    def start_backend(self):
        cfg = backend_config(harness.free_port(), self.backend_ports)
        self.backend = bench_envoy(self.workdir, "backend", "load", config=cfg, concurrency=1)
        self.backend.start(timeout=60.0, wait_healthy=False)
        for p in self.backend_ports:
            status, _ = harness.http_get(p, "/")
            if status != 200:
                raise RuntimeError(f"backend port {p} answered {status}")

    def start_front(self, name: str, kind: str, plugin_cfg,
                    wasm_path: Path | None = None) -> harness.Envoy:
        """A front Envoy, ready, its endpoints healthy. A second try (new ports) if the first
        start fails: the machine is shared, a port handed out may be taken meanwhile."""
        if kind in WAT_MODULES:
            wasm_path = self.wat_module(kind)
        elif kind in SDK_MODULES:
            wasm_path = SDK_MODULES[kind]
            if not wasm_path.exists():
                raise RuntimeError(f"{wasm_path} missing: run `make build-sticky-sdk`")
        for attempt in (1, 2):
            envoy = front_envoy(self.workdir, f"{name}-{attempt}", kind, plugin_cfg,
                                self.backend_ports, wasm_path)
            try:
                return envoy.start(timeout=60.0)
            except Exception as exc:  # noqa: BLE001
                envoy.stop()
                if attempt == 2:
                    raise
                log(f"WARNING {name}: start failed, trying again: {str(exc)[:300]}")
        raise AssertionError("unreachable")

    # one variant, one round: start, check, warm up, measure, stop
    def run_variant(self, key: str, rnd: int) -> dict:
        label, kind, plugin_cfg, shape = VARIANTS[key]
        alt = self.args.alt_module if key.endswith("@alt") else self.args.module
        envoy = self.start_front(f"front-{key.replace('@', '-')}-r{rnd}", kind, plugin_cfg, alt)
        port = envoy.port
        try:
            headers, ids, warm_ids, check = self.prepare(key, shape, port, rnd)
            if key not in self.checks:
                self.checks[key] = check
                if not check.get("ok", True):
                    log(f"WARNING {key}: {check}")
            warm = self.args.warmup
            if warm:
                run_wrk(port, warm, self.args.connections, headers, warm_ids)
            m = measure(envoy, lambda: run_wrk(port, self.args.requests, self.args.connections,
                                               headers, ids))
            gen = m.pop("gen")
            m.update({"round": rnd, "ready_s": envoy.ready_s, "rps": gen["requests"] * 1e6 / gen["duration_us"],
                      "lat_p50_us": gen["lat_p50_us"], "lat_p99_us": gen["lat_p99_us"],
                      "wrk_requests": gen["requests"], "errors": gen["errors"],
                      "rss_kib": rss_kib(envoy)})
            if gen["errors"]:
                log(f"WARNING {key} round {rnd}: wrk errors {gen}")
            return m
        finally:
            envoy.stop()

    def prepare(self, key, shape, port, rnd):
        """Headers for wrk, and a check that the session really pins (or spreads)."""
        c = harness.Client(port)
        try:
            headers, ids, warm_ids = [], None, None
            check: dict = {}
            if shape == "native-returning":
                r = c.request("/", cookie=None)
                sc = r.set_cookie("native")
                if sc is None:
                    raise RuntimeError(f"native filter set no cookie: {r.headers}")
                cred = f"cookie: native={sc.value}"
                check = self.pin_check(c, first=r.backend, headers=[("cookie", f"native={sc.value}")])
                headers = [cred]
            elif shape in ("cookie-returning", "sticky-returning"):
                name = harness.COOKIE if shape == "cookie-returning" else STICKY_WAT_COOKIE
                r = c.request("/", cookie=None)
                sc = r.set_cookie(name)
                if sc is None:
                    raise RuntimeError(f"{key} set no cookie {name!r}: {r.headers}")
                check = self.pin_check(c, first=r.backend, headers=[("cookie", f"{name}={sc.value}")])
                headers = [f"cookie: {name}={sc.value}"]
            elif shape == "header-returning":
                r = c.request("/", cookie=None)
                tok = r.header(TOKEN_HEADER)
                if not tok:
                    raise RuntimeError(f"tether header type gave no {TOKEN_HEADER}: {r.headers}")
                check = self.pin_check(c, first=r.backend, headers=[(TOKEN_HEADER, tok[0])])
                headers = [f"{TOKEN_HEADER}: {tok[0]}"]
            elif shape == "mcp-returning":
                r = c.request("/", cookie=None)
                env = r.header(MCP_HEADER)
                if not env or len(env[0]) < 40:
                    raise RuntimeError(f"tether gave no envelope in {MCP_HEADER}: {r.headers}")
                check = self.pin_check(c, first=r.backend, headers=[(MCP_HEADER, env[0])])
                headers = [f"{MCP_HEADER}: {env[0]}"]
            elif shape == "learn-returning":
                fmt = "fixed-%d"
                first = c.request("/", cookie=None, headers=[(LEARN_HEADER, fmt % 0)])
                check = self.pin_check(c, first=first.backend, headers=[(LEARN_HEADER, fmt % 0)])
                ids = (LEARN_HEADER, fmt, LEARN_IDS, LEARN_IDS, 1, 0)
                warm_ids = ids  # the warm-up binds all of them; the run only returns
            elif shape == "learn-new":
                n = self.args.requests
                ids = (LEARN_HEADER, f"new-r{rnd}-%d", 10**9, n, 1, 0)
                warm_ids = (LEARN_HEADER, f"warm-r{rnd}-%d", 10**9, max(1, self.args.warmup), 1, 0)
                check = self.spread_check(c, [[(LEARN_HEADER, f"probe-r{rnd}-{i}")] for i in range(12)])
            elif shape == "source-ip":
                first = c.request("/", cookie=None)
                check = self.pin_check(c, first=first.backend, headers=[])
            else:  # plain: none, native-new, cookie-new
                check = self.spread_check(c, [[] for _ in range(12)])
                base = key.split("@")[0].removeprefix("n-")
                if base in ("cookie-new", "native-new", "wasm-sticky-new", "wasm-sticky-sdk-new",
                            "wasm-sticky-sealed-new",
                            "native-floor-new"):
                    r = c.request("/", cookie=None)
                    name = {"native-new": "native", "wasm-sticky-new": STICKY_WAT_COOKIE,
                            "wasm-sticky-sdk-new": STICKY_WAT_COOKIE,
                            "wasm-sticky-sealed-new": STICKY_WAT_COOKIE,
                            "native-floor-new": STICKY_WAT_COOKIE}.get(base, harness.COOKIE)
                    check["set_cookie_each_response"] = r.set_cookie(name) is not None
            return headers, ids, warm_ids, check
        finally:
            c.close()

    @staticmethod
    def pin_check(c, first, headers, n: int = 12) -> dict:
        backends, set_cookies = [], 0
        sent = dict(headers).get(MCP_HEADER)
        for _ in range(n):
            r = c.request("/", cookie=None, headers=headers)
            backends.append(r.backend if r.status == 200 else f"status {r.status}")
            set_cookies += len(r.header("set-cookie")) + len(r.header(TOKEN_HEADER))
            # An envelope handed back is the one sent; another one is a re-issue.
            set_cookies += sum(1 for v in r.header(MCP_HEADER) if sent and v != sent)
        ok = all(b == first for b in backends)
        return {"ok": ok, "kind": "pinned", "first": first, "backends": sorted(set(backends)),
                "token_reissued_on_returning": set_cookies}

    @staticmethod
    def spread_check(c, header_sets) -> dict:
        backends = []
        for hs in header_sets:
            r = c.request("/", cookie=None, headers=hs)
            backends.append(r.backend if r.status == 200 else f"status {r.status}")
        ok = len(set(backends)) >= 2 and all(b and b.startswith("backend-") for b in backends)
        return {"ok": ok, "kind": "spread", "backends": sorted(set(backends))}

    def variant_rounds(self) -> dict:
        keys = [k for k in VARIANTS if not self.args.only or k.split("@")[0] in self.args.only]
        runs: dict[str, list] = {k: [] for k in keys}
        # a throwaway run first: the backend Envoy, the page cache and the CPU warm up here,
        # not in whichever variant happens to come first
        for key in ("none", "cookie"):
            self.run_variant(key, -1)
        self.checks.clear()
        for rnd in range(self.args.rounds):
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]
            for key in order:
                m = self.run_variant(key, rnd)
                runs[key].append(m)
                log(f"round {rnd + 1}/{self.args.rounds} {key:11s} {m['cpu_us_per_req']:7.1f} us/req "
                    f"(sched {m['sched_us_per_req']:6.1f})  {m['rps']:8.0f} req/s  "
                    f"p50 {m['lat_p50_us'] / 1000:.2f} ms  p99 {m['lat_p99_us'] / 1000:.2f} ms  "
                    f"ready {m['ready_s']:.2f} s")
        return runs

    def comparisons(self) -> list[tuple[str, tuple[str, Path | None], tuple[str, Path | None]]]:
        """What --paired compares: each tether variant with module A against module B
        (--alt-module), or two variants with the same module (--versus A:B)."""
        if self.args.versus:
            return [(f"{a}:{b}", (a, self.args.module), (b, self.args.module))
                    for a, b in self.args.versus]
        return [(key, (key, self.args.module), (f"{key}@alt", self.args.alt_module))
                for key in VARIANTS if "@" not in key and VARIANTS[key][1] in TETHER_KINDS
                and (not self.args.only or key in self.args.only)]

    # A/B, paired: both sides up at once, short runs alternating A B B A ...
    def paired(self, pairs: int, per_start: int = 5) -> dict:
        """For each comparison, two front Envoys (module A and module B, or variant A and
        variant B) run side by side; short measured runs alternate between them (A first in even
        pairs, B first in odd ones), so slow drifts of this shared machine hit both alike. Both
        are restarted every `per_start` pairs: one process can be faster than another for its
        whole life (code and heap placement), and fresh starts average that out. Each pair gives
        a ratio B/A of CPU (schedstat, ns) per request; the median and spread are what to read."""
        out: dict[str, dict] = {}
        for name, side_a, side_b in self.comparisons():
            costs: dict[str, list[float]] = {"a": [], "b": []}
            ratios: list[float] = []
            checks: dict[str, dict] = {}
            done, start = 0, 0
            while done < pairs:
                sides = []
                try:
                    for side, (key, wasm) in (("a", side_a), ("b", side_b)):
                        _, kind, plugin_cfg, shape = VARIANTS[key.split("@")[0]]
                        envoy = self.start_front(f"pair-{key.replace('@', '-')}-{side}-{start}",
                                                 kind, plugin_cfg, wasm)
                        port = envoy.port
                        sides.append((envoy, port, [], None, shape))
                        headers, ids, warm_ids, check = self.prepare(key, shape, port, start)
                        if not check.get("ok", True):
                            log(f"WARNING {key}/{side}: {check}")
                        checks.setdefault(side, check)
                        sides[-1] = (envoy, port, headers, ids, shape)
                        if self.args.warmup:
                            run_wrk(port, self.args.warmup, self.args.connections, headers, warm_ids)
                    for _ in range(min(per_start, pairs - done)):
                        order = ("a", "b") if done % 2 == 0 else ("b", "a")
                        got = {}
                        for side in order:
                            envoy, port, headers, ids, shape = sides[0 if side == "a" else 1]
                            if ids is not None and shape == "learn-new":  # never-seen ids each run
                                ids = ids[:5] + ((2 * done + (side == "b")) * self.args.requests,)
                            m = measure(envoy, lambda: run_wrk(port, self.args.requests,
                                                               self.args.connections, headers, ids))
                            got[side] = m["sched_us_per_req"]
                            costs[side].append(m["sched_us_per_req"])
                        ratios.append(got["b"] / got["a"])
                        done += 1
                finally:
                    for side in sides:
                        side[0].stop()
                start += 1
            out[name] = {"a": side_a[0], "b": side_b[0], "a_us": stats(costs["a"]),
                         "b_us": stats(costs["b"]), "ratio": stats(ratios), "ratios": ratios,
                         "starts": start, "checks": checks}
            r = out[name]["ratio"]
            log(f"paired {name:11s} A {out[name]['a_us']['median']:6.1f} us  "
                f"B {out[name]['b_us']['median']:6.1f} us  B/A {r['median']:.3f} "
                f"({r['min']:.2f}-{r['max']:.2f}, {pairs} pairs, {start} starts)")
        return out

    # the binding table at scale
    def scale(self, kind: str = "tether") -> dict:
        """The binding table at each level of --scale, with the Wasm build (`tether`: Envoy's
        shared data) or the native one (`tether-native`: process memory)."""
        levels = self.args.scale
        tag = "" if kind == "tether" else "native-"
        envoys: dict[int, harness.Envoy] = {}
        out: dict = {"levels": {}, "fill_connections": 8, "fill_depth": 64}
        try:
            # baseline: the same filter with the smallest table, a few requests served
            env = self.start_front(f"scale-{tag}baseline", kind,
                                   plugin(type="learn", learn_from="header",
                                          session_name=LEARN_HEADER, max_sessions=8))
            envoys[0] = env
            # as many distinct ids as the 10k level (all but 8 evicted), so that Envoy's own
            # buffers and allocator have seen the same traffic as a filled table's Envoy
            PipelinedFill(env.port, LEARN_HEADER, "b%07d").run(0, min(10000, max(levels)), 30)
            out["baseline_rss_kib"] = rss_kib(env)
            out["baseline_ready_s"] = env.ready_s
            env.stop()
            del envoys[0]
            fill_left = self.args.fill_budget
            for n in levels:
                cfg = plugin(type="learn", learn_from="header", session_name=LEARN_HEADER,
                             max_sessions=2 * n)
                env = self.start_front(f"scale-{tag}{n}", kind, cfg)
                envoys[n] = env
                port = env.port
                rss0 = rss_kib(env)
                cap = max(5.0, min(fill_left, self.args.fill_cap))
                t0 = time.monotonic()
                m = measure(env, lambda: PipelinedFill(port, LEARN_HEADER, "s%07d").run(0, n, cap))
                fill_left -= time.monotonic() - t0
                fill = m.pop("gen")
                reached = fill["completed"] - fill["non_200"]
                rss1 = rss_kib(env)
                lvl = {"target": n, "max_sessions": 2 * n, "reached": reached, "fill": fill,
                       "fill_cpu_us_per_req": m["cpu_us_per_req"], "ready_s": env.ready_s,
                       "rss_start_kib": rss0, "rss_filled_kib": rss1, "lookups": []}
                lvl["bytes_per_binding"] = (rss1 - out["baseline_rss_kib"]) * 1024 / max(1, reached)
                lvl["fill_bytes_per_binding"] = (rss1 - rss0) * 1024 / max(1, reached)
                out["levels"][n] = lvl
                log(f"scale {tag}{n}: filled {reached} in {fill['wall_s']:.1f} s "
                    f"({fill['rate_per_s']:.0f}/s, {m['cpu_us_per_req']:.1f} us/req), "
                    f"ready {env.ready_s:.2f} s, RSS {rss0 // 1024} -> {rss1 // 1024} MiB, "
                    f"{lvl['bytes_per_binding']:.0f} B/binding over baseline")
            # lookups on returning ids, interleaved over the levels (all still running)
            for rep in range(self.args.scale_rounds):
                order = levels[rep % len(levels):] + levels[:rep % len(levels)]
                for n in order:
                    env = envoys[n]
                    port = env.port
                    reached = out["levels"][n]["reached"]
                    count = max(1, min(reached, self.args.requests))
                    stride = _coprime_stride(reached)
                    ids = (LEARN_HEADER, "s%07d", reached, count, stride, rep * 7919)
                    if self.args.warmup:
                        run_wrk(port, self.args.warmup, self.args.connections, (),
                                (LEARN_HEADER, "s%07d", reached, count, stride, rep * 7919 + 1))
                    m = measure(env, lambda: run_wrk(port, self.args.requests, self.args.connections,
                                                     (), ids))
                    gen = m.pop("gen")
                    m.update({"round": rep, "rps": gen["requests"] * 1e6 / gen["duration_us"],
                              "lat_p50_us": gen["lat_p50_us"], "lat_p99_us": gen["lat_p99_us"],
                              "errors": gen["errors"], "distinct_ids": count})
                    out["levels"][n]["lookups"].append(m)
                    log(f"scale {tag}lookup {rep + 1}/{self.args.scale_rounds} N={n}: "
                        f"{m['cpu_us_per_req']:.1f} us/req, {m['rps']:.0f} req/s")
            for n in levels:
                out["levels"][n]["rss_end_kib"] = rss_kib(envoys[n])
        finally:
            for env in envoys.values():
                env.stop()
        return out

    def load_time_samples(self, n: int) -> dict:
        """Start-to-/ready of an Envoy with tether vs one without, alternating, n each. Not
        pinned: V8 compiles the module on every CPU it is given, as in a user's Envoy."""
        samples = {"none": [], "tether": []}
        pinned = dict(PIN)
        PIN.clear()
        try:
            for _ in range(n):
                for key, kind, cfg in (("none", "none", None), ("tether", "tether", harness.SHIPPED)):
                    env = self.start_front(f"load-{key}", kind, cfg)
                    samples[key].append(env.ready_s)
                    env.stop()
        finally:
            PIN.update(pinned)
        return samples


def _coprime_stride(n: int) -> int:
    import math
    s = max(1, int(n * 0.618033)) | 1
    while math.gcd(s, n) != 1:
        s += 2
    return s


# --------------------------------------------------------------------------------------------
# summary, JSON, SVG, Markdown

def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def cmd(*c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:  # noqa: BLE001
            return "unknown"

    envoy_v = cmd(harness.envoy_binary(), "--version")
    m = re.search(r"version: \S+?/([\d.]+)/(\S+)", envoy_v)
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    wrk_v = cmd("wrk", "-v").splitlines()
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
        "mem_gib": round(mem_kib / 1048576, 1),
        "envoy": m.group(1) + "/" + m.group(2) if m else envoy_v,
        "rustc": cmd("rustc", "--version"),
        "wrk": (re.findall(r"wrk \S*?([\d.]+)", wrk_v[0]) or [wrk_v[0]])[0] if wrk_v else "unknown",
        "python": platform.python_version(),
        "git_commit": cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "git_dirty_src": bool(cmd("git", "-C", str(REPO), "status", "--porcelain", "src", "Cargo.toml")),
        "load_avg_at_start": os.getloadavg(),
    }


def summarize_scale(scale: dict | None):
    """The medians and ratios of one scale run, added to it."""
    if not scale:
        return
    levels = scale["levels"]
    for n, lvl in levels.items():
        if lvl["lookups"]:
            lvl["lookup_cpu_us_per_req"] = stats([m["cpu_us_per_req"] for m in lvl["lookups"]])
            lvl["lookup_sched_us_per_req"] = stats([m["sched_us_per_req"] for m in lvl["lookups"]])
            lvl["lookup_p50_us"] = statistics.median([m["lat_p50_us"] for m in lvl["lookups"]])
            lvl["lookup_p99_us"] = statistics.median([m["lat_p99_us"] for m in lvl["lookups"]])
    ns = sorted(levels)
    small, big = ns[0], ns[-1]
    if levels[small].get("lookup_cpu_us_per_req") and levels[big].get("lookup_cpu_us_per_req"):
        a, b = levels[big]["lookups"], levels[small]["lookups"]
        scale["lookup_ratio_largest_vs_smallest"] = {
            "largest": big, "smallest": small,
            "of_medians": levels[big]["lookup_cpu_us_per_req"]["median"]
            / levels[small]["lookup_cpu_us_per_req"]["median"],
            "paired": stats([x["cpu_us_per_req"] / y["cpu_us_per_req"] for x, y in zip(a, b)]),
        }
    scale["bytes_per_binding_largest"] = levels[big]["bytes_per_binding"]


def summarize(runs: dict, scale: dict | None, load: dict, module: dict, info: dict, args,
              checks: dict, started: float) -> dict:
    variants = {}
    for key, items in runs.items():
        if not items:
            continue
        variants[key] = {
            "label": VARIANTS[key][0],
            "cpu_us_per_req": stats([m["cpu_us_per_req"] for m in items]),
            "sched_us_per_req": stats([m["sched_us_per_req"] for m in items]),
            "rps": stats([m["rps"] for m in items]),
            "lat_p50_us": stats([m["lat_p50_us"] for m in items]),
            "lat_p99_us": stats([m["lat_p99_us"] for m in items]),
            "ready_s": stats([m["ready_s"] for m in items]),
            "rss_kib": stats([m["rss_kib"] for m in items]),
            "errors": sum(m["errors"] for m in items),
            "check": checks.get(key),
            "runs": items,
        }

    def ratio(a, b, field="cpu_us_per_req"):
        if a not in variants or b not in variants:
            return None
        med = variants[a][field]["median"] / variants[b][field]["median"]
        paired = [x[field] / y[field] for x, y in zip(runs[a], runs[b])]
        return {"of_medians": med, "paired": stats(paired)}

    ratios = {
        "returning_cookie_vs_native": ratio("cookie", "native"),
        "new_cookie_vs_native_new": ratio("cookie-new", "native-new"),
        "new_cookie_vs_native_returning": ratio("cookie-new", "native"),
        "header_vs_native": ratio("header", "native"),
        "mcp_vs_header": ratio("mcp", "header"),
        "mcp_new_vs_header_new": ratio("mcp-new", "header-new"),
        "learn_vs_native": ratio("learn", "native"),
        "learn_new_vs_native_new": ratio("learn-new", "native-new"),
        "source_ip_vs_native": ratio("source-ip", "native"),
        "native_vs_none": ratio("native", "none"),
        "cookie_vs_none": ratio("cookie", "none"),
        "wasm_empty_vs_native": ratio("wasm-empty", "native"),
        "cookie_vs_wasm_empty": ratio("cookie", "wasm-empty"),
        "cookie_new_vs_wasm_empty": ratio("cookie-new", "wasm-empty"),
        "route_off_vs_wasm_empty": ratio("route-off", "wasm-empty"),
        "wasm_sticky_vs_native": ratio("wasm-sticky", "native"),
        "wasm_sticky_new_vs_native_new": ratio("wasm-sticky-new", "native-new"),
        "cookie_vs_wasm_sticky": ratio("cookie", "wasm-sticky"),
        "cookie_new_vs_wasm_sticky_new": ratio("cookie-new", "wasm-sticky-new"),
        # The SDK floor (bench/sticky-sdk) next to sticky.wat: the part of the Wasm build's gap
        # no filter on the SDK can remove; and tether next to it: what tether adds on the SDK.
        "wasm_sticky_sdk_vs_wasm_sticky": ratio("wasm-sticky-sdk", "wasm-sticky"),
        "wasm_sticky_sdk_new_vs_wasm_sticky_new": ratio("wasm-sticky-sdk-new", "wasm-sticky-new"),
        "cookie_vs_wasm_sticky_sdk": ratio("cookie", "wasm-sticky-sdk"),
        "cookie_new_vs_wasm_sticky_sdk_new": ratio("cookie-new", "wasm-sticky-sdk-new"),
        # ... and with its cookie sealed: the floor of an authenticated cookie on the SDK.
        "wasm_sticky_sealed_vs_wasm_sticky": ratio("wasm-sticky-sealed", "wasm-sticky"),
        "wasm_sticky_sealed_new_vs_wasm_sticky_new": ratio("wasm-sticky-sealed-new", "wasm-sticky-new"),
        "cookie_vs_wasm_sticky_sealed": ratio("cookie", "wasm-sticky-sealed"),
        "cookie_new_vs_wasm_sticky_sealed_new": ratio("cookie-new", "wasm-sticky-sealed-new"),
        # The native build (issue #14) next to Envoy's own filter.
        "n_cookie_vs_native": ratio("n-cookie", "native"),
        "n_cookie_new_vs_native_new": ratio("n-cookie-new", "native-new"),
        "n_header_vs_native": ratio("n-header", "native"),
        "n_mcp_vs_native": ratio("n-mcp", "native"),
        "n_learn_vs_native": ratio("n-learn", "native"),
        "n_source_ip_vs_native": ratio("n-source-ip", "native"),
        # ... and next to the cheapest sticky dynamic module (bench/floor), and that floor next
        # to Envoy's own filter: how much of the native build's cost any module on the ABI pays.
        "native_floor_vs_native": ratio("native-floor", "native"),
        "native_floor_strip_vs_native": ratio("native-floor-strip", "native"),
        "n_cookie_vs_native_floor_strip": ratio("n-cookie", "native-floor-strip"),
        "native_floor_new_vs_native_new": ratio("native-floor-new", "native-new"),
        "n_cookie_vs_native_floor": ratio("n-cookie", "native-floor"),
        "n_cookie_new_vs_native_floor_new": ratio("n-cookie-new", "native-floor-new"),
        "n_header_vs_native_floor": ratio("n-header", "native-floor"),
        "n_mcp_vs_native_floor": ratio("n-mcp", "native-floor"),
        "n_learn_vs_native_floor": ratio("n-learn", "native-floor"),
        "n_source_ip_vs_native_floor": ratio("n-source-ip", "native-floor"),
        "n_cookie_vs_cookie": ratio("n-cookie", "cookie"),
    }
    ratios["sched_returning_cookie_vs_native"] = ratio("cookie", "native", "sched_us_per_req")
    ratios["sched_new_cookie_vs_native_new"] = ratio("cookie-new", "native-new", "sched_us_per_req")

    # module load time: start to /ready with tether minus without
    tether_ready = [m["ready_s"] for k, items in runs.items() if VARIANTS[k][1] == "tether" for m in items]
    plain_ready = [m["ready_s"] for k, items in runs.items() if VARIANTS[k][1] in ("none", "native")
                   for m in items]
    load_time = {"dedicated": {k: stats(v) for k, v in load.items() if v}}
    if load.get("none") and load.get("tether"):
        load_time["load_ms"] = (statistics.median(load["tether"]) - statistics.median(load["none"])) * 1000
    if tether_ready and plain_ready:
        load_time["from_rounds"] = {"tether_ready_s": stats(tether_ready),
                                    "no_wasm_ready_s": stats(plain_ready),
                                    "load_ms": (statistics.median(tether_ready)
                                                - statistics.median(plain_ready)) * 1000}

    scale, scale_native = scale if isinstance(scale, tuple) else (scale, None)
    summarize_scale(scale)
    summarize_scale(scale_native)

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "settings": {"front_concurrency": FRONT_CONCURRENCY, "rounds": args.rounds,
                     "requests_per_run": args.requests, "warmup_per_run": args.warmup,
                     "connections": args.connections, "generator": "wrk -t1, keep-alive, HTTP/1.1",
                     "clk_tck": CLK_TCK, "scale_levels": args.scale, "scale_rounds": args.scale_rounds,
                     "fill_cap_s": args.fill_cap, "fill_budget_s": args.fill_budget,
                     "pinned": {k: sorted(v) for k, v in PIN.items()}},
        "targets": TARGETS,
        "module": module,
        "variants": variants,
        "ratios": ratios,
        "scale": scale,
        "scale_native": scale_native,
        "load_time": load_time,
    }


def module_info() -> dict:
    data = harness.WASM.read_bytes()
    return {"path": str(harness.WASM.relative_to(REPO)), "bytes": len(data),
            "kib": round(len(data) / 1024, 1), "sha256": hashlib.sha256(data).hexdigest(),
            "mtime": dt.datetime.fromtimestamp(harness.WASM.stat().st_mtime, dt.timezone.utc)
            .isoformat(timespec="seconds")}


def write_svg(res: dict, path: Path):
    v = res["variants"]
    keys = [k for k in VARIANTS if k in v]
    row_h, top, left, width = 34, 96, 300, 460
    height = top + row_h * len(keys) + 60
    vmax = max(v[k]["cpu_us_per_req"]["max"] for k in keys) * 1.15
    x = lambda val: left + width * val / vmax  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="16" font-weight="bold">tether: front Envoy CPU per request '
        f'(µs, median of {res["settings"]["rounds"]} round{"s" if res["settings"]["rounds"] > 1 else ""}, '
        f'whiskers min–max)</text>',
        f'<text x="10" y="42" fill="#555">{html.escape(res["machine"]["cpu_model"])}, '
        f'{res["machine"]["nproc"]} CPUs, Envoy {html.escape(res["machine"]["envoy"])}, '
        f'--concurrency {FRONT_CONCURRENCY}, {res["date"][:10]}</text>',
    ]
    # grid
    step = _nice_step(vmax)
    g = 0.0
    while g <= vmax:
        parts.append(f'<line x1="{x(g):.1f}" y1="{top - 6}" x2="{x(g):.1f}" '
                     f'y2="{top + row_h * len(keys)}" stroke="#eee"/>')
        parts.append(f'<text x="{x(g):.1f}" y="{top + row_h * len(keys) + 16}" text-anchor="middle" '
                     f'fill="#555">{g:g}</text>')
        g += step
    parts.append(f'<text x="{left + width / 2:.0f}" y="{top + row_h * len(keys) + 34}" '
                 f'text-anchor="middle" fill="#555">µs of CPU per request</text>')
    # native reference lines and targets
    if "native" in v:
        nat = v["native"]["cpu_us_per_req"]["median"]
        refs = ((1.0, "#1f77b4", "native returning (median)"),
                (TARGETS["native_cookie_max"], "#2ca02c",
                 f"native × {TARGETS['native_cookie_max']:.2f}: native build cookie returning target"),
                (TARGETS["native_other_max"], "#d62728",
                 f"native × {TARGETS['native_other_max']:.2f}: native build's other targets"))
        for j, (mult, colour, label) in enumerate(refs):
            xv = x(nat * mult)
            ly = top - 36 + 12 * j
            parts.append(f'<line x1="{xv:.1f}" y1="{ly}" x2="{xv:.1f}" y2="{top + row_h * len(keys)}" '
                         f'stroke="{colour}" stroke-dasharray="4 3"/>')
            parts.append(f'<text x="{xv + 4:.1f}" y="{ly + 4}" font-size="11" '
                         f'fill="{colour}">{label}</text>')
    for i, k in enumerate(keys):
        s = v[k]["cpu_us_per_req"]
        y = top + i * row_h
        colour = {"none": "#999999", "native": "#1f77b4"}.get(VARIANTS[k][1], "#ff7f0e")
        parts.append(f'<text x="{left - 8}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
                     f'{html.escape(v[k]["label"])}</text>')
        parts.append(f'<rect x="{left}" y="{y + 7}" width="{x(s["median"]) - left:.1f}" '
                     f'height="{row_h - 14}" fill="{colour}" opacity="0.85"/>')
        yc = y + row_h / 2
        parts.append(f'<line x1="{x(s["min"]):.1f}" y1="{yc:.1f}" x2="{x(s["max"]):.1f}" y2="{yc:.1f}" '
                     f'stroke="black"/>')
        for e in (s["min"], s["max"]):
            parts.append(f'<line x1="{x(e):.1f}" y1="{yc - 6:.1f}" x2="{x(e):.1f}" y2="{yc + 6:.1f}" '
                         f'stroke="black"/>')
        parts.append(f'<text x="{x(s["max"]) + 6:.1f}" y="{yc + 4:.1f}">{s["median"]:.1f}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _nice_step(vmax: float) -> float:
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000):
        if vmax / s <= 8:
            return float(s)
    return 1000.0


def _fmt_ratio(r) -> str:
    if not r:
        return "n/a"
    p = r["paired"]
    return f"{r['of_medians']:.2f}× (per round {p['min']:.2f}–{p['max']:.2f})"


def _verdict(value, limit) -> str:
    if value is None:
        return ""
    return "met" if value <= limit else "**not met**"


def markdown(res: dict, svg_name: str) -> str:
    m, v, r = res["machine"], res["variants"], res["ratios"]
    s = res["settings"]
    out = []
    out.append(f"Run of {res['date']} ({res['mode']} mode, {res['duration_s']:.0f} s): "
               f"{m['cpu_model']}, {m['nproc']} CPUs, {m['mem_gib']} GiB, Linux {m['kernel']}; "
               f"Envoy {m['envoy']}; {m['rustc']}; wrk {m['wrk']}; tether at {m['git_commit']}"
               f"{' (src/ modified)' if m['git_dirty_src'] else ''}, module sha256 "
               f"{res['module']['sha256'][:12]}. Load average at the start: "
               f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}.")
    out.append("")
    out.append(f"Front Envoy `--concurrency {s['front_concurrency']}`; {s['rounds']} interleaved rounds; "
               f"each run {s['requests_per_run']} requests after {s['warmup_per_run']} warm-up, "
               f"{s['connections']} keep-alive connections ({s['generator']})"
               + (f"; the measured Envoy pinned to CPU {s['pinned']['front']}, load generator and "
                  f"backend to CPU {s['pinned']['load']}." if s.get("pinned") else "."))
    out.append("")
    out.append("### Headline: issue 14's targets")
    out.append("")
    out.append("| ratio (CPU per request) | measured | target | |")
    out.append("|---|---|---|---|")

    def target_row(key, text, target):
        if r.get(key):
            out.append(f"| {text} | {_fmt_ratio(r[key])} | ≤ {target:.2f} | "
                       f"{_verdict(r[key]['of_medians'], target)} |")

    for key, text, target in (
            ("n_cookie_vs_native", "native build cookie returning / native stateful_session returning",
             TARGETS["native_cookie_max"]),
            ("n_cookie_new_vs_native_new", "native build cookie new / native stateful_session new",
             TARGETS["native_other_max"]),
            ("n_header_vs_native", "native build header returning / native stateful_session returning",
             TARGETS["native_other_max"]),
            ("n_mcp_vs_native", "native build MCP envelope returning / native stateful_session returning",
             TARGETS["native_other_max"]),
            ("n_learn_vs_native", "native build learn returning / native stateful_session returning",
             TARGETS["native_other_max"]),
            ("n_source_ip_vs_native", "native build source_ip / native stateful_session returning",
             TARGETS["native_other_max"]),
            ("cookie_vs_wasm_sticky", "Wasm build cookie returning / cheapest sticky wasm filter returning",
             TARGETS["wasm_vs_sticky_max"]),
            ("cookie_new_vs_wasm_sticky_new", "Wasm build cookie new / cheapest sticky wasm filter new",
             TARGETS["wasm_new_vs_sticky_max"])):
        target_row(key, text, target)
    sc = res.get("scale") or {}
    for build, scx, bpb_max in (("Wasm build: ", sc, TARGETS["bytes_per_binding_max"]),
                                ("native build: ", res.get("scale_native") or {},
                                 TARGETS["native_bytes_per_binding_max"])):
        lr = scx.get("lookup_ratio_largest_vs_smallest")
        if not lr:
            continue
        big = scx["levels"][lr["largest"]]
        out.append(f"| {build}lookup at {big['reached']:,} bindings / at {lr['smallest']:,} | {_fmt_ratio(lr)} | ≤ "
                   f"{TARGETS['scale_ratio_max']:.1f} | {_verdict(lr['of_medians'], TARGETS['scale_ratio_max'])} |")
        bpb = scx["bytes_per_binding_largest"]
        out.append(f"| {build}RSS per binding at {big['reached']:,} bindings | {bpb:.0f} B | ≤ "
                   f"{bpb_max} B | {_verdict(bpb, bpb_max)} |")
    out.append("")
    out.append("### The floors, and the other figures")
    out.append("")
    out.append("Issue 13's MCP targets, the floors each build is measured against, and the figures "
               "of issue 4 that issue 14 restated (issue 4's targets are kept here for comparison, "
               "not as targets).")
    out.append("")
    out.append("| ratio (CPU per request) | measured | target | |")
    out.append("|---|---|---|---|")
    for key, text in (("mcp_vs_header", "tether MCP envelope returning / tether header returning"),
                      ("mcp_new_vs_header_new", "tether MCP envelope new / tether header new")):
        target_row(key, text, TARGETS["mcp_vs_header_max"])

    def reference(key, text, note):
        if r.get(key):
            out.append(f"| (for reference) {text} | {_fmt_ratio(r[key])} | | {note} |")

    for key, text, note in (
            ("native_floor_vs_native", "cheapest sticky dynamic module returning / native returning",
             "the floor of any sticky dynamic module here"),
            ("native_floor_new_vs_native_new", "cheapest sticky dynamic module new / native new",
             "the floor of any sticky dynamic module here"),
            ("native_floor_strip_vs_native",
             "cheapest sticky dynamic module taking its cookie out, returning / native returning",
             "the floor of a cookie session that leaves no token to the backend"),
            ("n_cookie_vs_native_floor_strip",
             "native build cookie returning / the floor taking its cookie out",
             "tether's own work above that floor"),
            ("n_cookie_vs_native_floor", "native build cookie returning / cheapest sticky dynamic module",
             "tether's own work"),
            ("n_cookie_new_vs_native_floor_new", "native build cookie new / cheapest sticky dynamic module new",
             "tether's own work"),
            ("n_header_vs_native_floor", "native build header returning / cheapest sticky dynamic module",
             "tether's own work"),
            ("n_mcp_vs_native_floor", "native build MCP envelope returning / cheapest sticky dynamic module",
             "tether's own work"),
            ("n_learn_vs_native_floor", "native build learn returning / cheapest sticky dynamic module",
             "tether's own work"),
            ("n_source_ip_vs_native_floor", "native build source_ip / cheapest sticky dynamic module",
             "tether's own work"),
            ("wasm_sticky_vs_native", "cheapest sticky wasm filter returning / native returning",
             "the floor of any proxy-wasm sticky filter here"),
            ("wasm_sticky_new_vs_native_new", "cheapest sticky wasm filter new / native new",
             "the floor of any proxy-wasm sticky filter here"),
            # The Wasm targets are against sticky.wat; bench/sticky-sdk is the same calls on the
            # SDK tether must use, so its ratio to sticky.wat is the part no SDK filter removes.
            ("wasm_sticky_sdk_vs_wasm_sticky", "SDK floor returning / sticky.wat returning",
             "the floor of any filter on the proxy-wasm SDK, above sticky.wat"),
            ("wasm_sticky_sdk_new_vs_wasm_sticky_new", "SDK floor new / sticky.wat new",
             "the floor of any filter on the proxy-wasm SDK, above sticky.wat"),
            ("cookie_vs_wasm_sticky_sdk", "tether cookie returning / SDK floor returning",
             "tether's own work on the SDK"),
            ("cookie_new_vs_wasm_sticky_sdk_new", "tether cookie new / SDK floor new",
             "tether's own work on the SDK"),
            ("wasm_sticky_sealed_vs_wasm_sticky", "sealed SDK floor returning / sticky.wat returning",
             "the floor of any filter on the SDK with an authenticated cookie (opened on every request)"),
            ("wasm_sticky_sealed_new_vs_wasm_sticky_new", "sealed SDK floor new / sticky.wat new",
             "the floor of any filter on the SDK with an authenticated cookie"),
            ("cookie_vs_wasm_sticky_sealed", "tether cookie returning / sealed SDK floor returning",
             "tether's own work above an authenticated cookie"),
            ("cookie_new_vs_wasm_sticky_sealed_new", "tether cookie new / sealed SDK floor new",
             "tether's own work above an authenticated cookie"),
            ("wasm_empty_vs_native", "empty proxy-wasm filter / native returning",
             "the floor of any wasm filter here"),
            ("cookie_vs_wasm_empty", "tether cookie returning / empty wasm filter", "tether's own work"),
            ("cookie_new_vs_wasm_empty", "tether cookie new / empty wasm filter", "tether's own work"),
            ("route_off_vs_wasm_empty", "tether disabled on the route / empty wasm filter",
             "tether's own work"),
            ("n_cookie_vs_cookie", "native build cookie returning / Wasm build cookie returning",
             "what the Wasm boundary costs tether")):
        reference(key, text, note)
    for key, text, note in (
            ("returning_cookie_vs_native", "Wasm build cookie returning / native returning",
             f"issue 4 asked ≤ {TARGETS['returning_ratio_max']:.2f}, below the sticky wasm floor"),
            ("new_cookie_vs_native_new", "Wasm build cookie new / native new",
             f"issue 4 asked ≤ {TARGETS['new_ratio_max']:.2f}"),
            ("new_cookie_vs_native_returning", "Wasm build cookie new / native returning",
             f"issue 4 asked ≤ {TARGETS['new_ratio_max']:.2f}")):
        reference(key, text, note)
    mod = res["module"]
    out.append(f"| (for reference) module size | {mod['bytes']:,} B ({mod['kib']} KiB) | | "
               f"issue 4 asked ≤ {TARGETS['module_kib_max']} KiB |")
    out.append("")
    out.append("### CPU per request, by variant")
    out.append("")
    out.append(f"![CPU per request]({svg_name})")
    out.append("")
    out.append("| variant | CPU µs/req (median) | min–max | / native | / no filter | req/s | p50 ms | p99 ms | session check |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    nat = v.get("native", {}).get("cpu_us_per_req", {}).get("median")
    none = v.get("none", {}).get("cpu_us_per_req", {}).get("median")
    for k in VARIANTS:
        if k not in v:
            continue
        x = v[k]
        c = x["cpu_us_per_req"]
        chk = x.get("check") or {}
        chk_s = ("pinned" if chk.get("ok") else "**NOT pinned**") if chk.get("kind") == "pinned" else \
            ("spread" if chk.get("ok") else "**not spread**") if chk.get("kind") == "spread" else ""
        out.append(f"| {x['label']} | {c['median']:.1f} | {c['min']:.1f}–{c['max']:.1f} | "
                   f"{c['median'] / nat:.2f} | {c['median'] / none:.2f} | {x['rps']['median']:.0f} | "
                   f"{x['lat_p50_us']['median'] / 1000:.2f} | {x['lat_p99_us']['median'] / 1000:.2f} | {chk_s} |"
                   if nat and none else f"| {x['label']} | {c['median']:.1f} | | | | | | | |")
    out.append("")
    for title, sc in (("", res.get("scale") or {}),
                      (", native build", res.get("scale_native") or {})):
        if not sc:
            continue
        out.append(f"### Binding table at scale (`learn` from a header, max_sessions = 2N{title})")
        out.append("")
        out.append(f"Baseline: the same filter with max_sessions = 8 holds "
                   f"{sc['baseline_rss_kib'] / 1024:.1f} MiB resident. Bytes per binding = (RSS filled − "
                   f"baseline) / bindings, so it includes the table's empty buckets; "
                   f"\"fill only\" = (RSS filled − RSS just after start) / bindings. Differences under "
                   f"{RSS_NOISE_KIB // 1024} MiB are start-to-start noise (marked).")
        out.append("")
        out.append("| N asked | bindings reached | fill rate /s | fill CPU µs/req (new id) | lookup CPU µs/req (median, min–max) | / smallest | p99 ms | start to ready s | RSS at start MiB | RSS filled MiB | B/binding | fill only B/binding |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        small = min(sc["levels"])
        base = sc["levels"][small].get("lookup_cpu_us_per_req", {}).get("median")
        for n in sorted(sc["levels"]):
            lvl = sc["levels"][n]
            lk = lvl.get("lookup_cpu_us_per_req")
            look = f"{lk['median']:.1f} ({lk['min']:.1f}–{lk['max']:.1f})" if lk else "n/a"
            rel = f"{lk['median'] / base:.2f}" if lk and base else ""
            capped = " (time cap)" if lvl["fill"]["capped"] else ""
            # Envoy's resident memory moves by a few MiB from one start to the next: a
            # difference smaller than that says nothing per binding
            def per(delta_kib, value):
                return f"({value:.0f}, noise)" if abs(delta_kib) < RSS_NOISE_KIB else f"{value:.0f}"
            bpb = per(lvl["rss_filled_kib"] - sc["baseline_rss_kib"], lvl["bytes_per_binding"])
            fbpb = per(lvl["rss_filled_kib"] - lvl["rss_start_kib"], lvl["fill_bytes_per_binding"])
            out.append(f"| {n:,} | {lvl['reached']:,}{capped} | {lvl['fill']['rate_per_s']:.0f} | "
                       f"{lvl['fill_cpu_us_per_req']:.1f} | {look} | {rel} | "
                       f"{lvl.get('lookup_p99_us', 0) / 1000:.2f} | {lvl['ready_s']:.2f} | "
                       f"{lvl['rss_start_kib'] / 1024:.1f} | {lvl['rss_filled_kib'] / 1024:.1f} | "
                       f"{bpb} | {fbpb} |")
        out.append("")
    lt = res["load_time"]
    out.append("### Module")
    out.append("")
    out.append(f"- size: {mod['bytes']:,} bytes ({mod['kib']} KiB), `{mod['path']}`")
    if "load_ms" in lt:
        d = lt["dedicated"]
        out.append(f"- load time: Envoy start to `/ready` with tether {d['tether']['median']:.3f} s vs "
                   f"without {d['none']['median']:.3f} s (medians of {d['tether']['n']} alternating "
                   f"starts, not pinned): **{lt['load_ms']:.0f} ms** for the module")
    if "from_rounds" in lt:
        fr = lt["from_rounds"]
        out.append(f"- the same from every start of the rounds: {fr['tether_ready_s']['median']:.3f} s "
                   f"(tether, {fr['tether_ready_s']['n']} starts) vs {fr['no_wasm_ready_s']['median']:.3f} s "
                   f"(no wasm, {fr['no_wasm_ready_s']['n']} starts): {fr['load_ms']:.0f} ms"
                   + (" (pinned to one CPU: V8 compiles on that one only)"
                      if res["settings"].get("pinned") else ""))
    out.append("")
    out.append(f"All figures: `bench/results/{'quick' if res['mode'] == 'quick' else 'latest'}.json`.")
    return "\n".join(out)


BENCHMARKS_TEMPLATE = """# tether benchmarks

## How to run

```sh
make bench                         # the full run, under 10 minutes
make bench BENCH_ARGS=--quick      # a smoke run of about a minute (1 round, small counts, 1k/10k only)
```

`make bench` builds the module, sets up the venv (Envoy 1.40) and installs `wrk` with apt-get when it
is missing, then runs `bench/run.py`. It writes `bench/results/latest.json` (every figure, every run,
the machine), `bench/results/latest.svg` (the chart below) and the results section of this file.
`--quick` writes `bench/results/quick.*` and leaves this file alone.

## Method

Everything runs on 127.0.0.1. The upstream is a second Envoy that answers `direct_response` 200 on
three listeners (`bench/backend.yaml`), so the upstream is cheap and is not Python. The front Envoy
is `envoy/envoy.yaml` as shipped (route and retry policy, the `app` cluster with the `override_host`
policy and round robin fallback, health checks, the upstream `header_mutation` filter), built in
memory the way the end-to-end tests build it, with only the HTTP filter changed per variant: no
filter; Envoy's `stateful_session` filter with cookie session state (`bench/native-filter.yaml`);
or tether in one of its session types. One front Envoy runs at a time, with one worker thread
(`--concurrency 1`), log level `warn`.

The cost of a variant is the front Envoy's CPU time (utime + stime from `/proc/PID/stat`) over a
run of a fixed number of requests, divided by the requests it completed (its own
`http.ingress.downstream_rq_completed`). Load comes from `wrk` (one thread, several keep-alive
connections, `bench/wrk.lua` stops at the request count). Each round runs every variant once, in
an order rotated by the round, each in a freshly started Envoy after a warm-up; the figures are
the median and the min–max over the rounds. Before its runs, every variant is checked: sticky
variants must send 12 requests of one session to one endpoint, the others must spread. The
schedstat CPU time (ns resolution) is recorded next to the ticks in the JSON as a cross-check.

Returning sessions carry a credential obtained first (the native cookie, tether's cookie or
header token, one of 64 learned ids, the client's address). New sessions carry none (cookie) or
a never-seen id (learn). Scale: `learn` from a header with `max_sessions = 2N`, N ids written by
a pipelined HTTP/1.1 client (bounded in time; the reached count is reported), then lookups of
returning ids spread over the whole table, interleaved over the table sizes. Memory per binding is
the Envoy's resident memory filled, minus that of the same filter with an 8-binding table, per
binding. Module load time: Envoy start to `/ready` with tether minus without, medians of
alternating starts.

The machine is shared and small, so absolute figures are noisy: the ratios of variants measured
side by side, round after round, are what to read.

## Results

{start}
{end}

## Where the cost goes

_To be written._
"""


def update_benchmarks_md(md_fragment: str):
    path = REPO / "BENCHMARKS.md"
    if path.exists():
        text = path.read_text()
    else:
        text = BENCHMARKS_TEMPLATE.format(start=MARK_START, end=MARK_END)
    if MARK_START not in text or MARK_END not in text:
        text = text.rstrip() + f"\n\n## Results\n\n{MARK_START}\n{MARK_END}\n"
    a = text.index(MARK_START) + len(MARK_START)
    b = text.index(MARK_END)
    text = text[:a] + "\n" + md_fragment.rstrip() + "\n" + text[b:]
    path.write_text(text)


# --------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, small counts, 1k/10k")
    p.add_argument("--rounds", type=int)
    p.add_argument("--requests", type=int, help="requests per measured run")
    p.add_argument("--warmup", type=int, help="warm-up requests before each measured run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",") if x], help="e.g. 1000,10000")
    p.add_argument("--scale-rounds", type=int)
    p.add_argument("--fill-cap", type=float, help="seconds at most to fill one table size")
    p.add_argument("--fill-budget", type=float, help="seconds at most to fill all table sizes")
    p.add_argument("--load-starts", type=int, help="alternating starts for the load time")
    p.add_argument("--no-scale", action="store_true")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x],
                   help="run only these variants, e.g. native,cookie,wasm-empty")
    p.add_argument("--module", type=lambda s: Path(s).resolve(), metavar="WASM",
                   help="the module of the tether variants (default: the built one)")
    p.add_argument("--alt-module", type=Path, metavar="WASM",
                   help="A/B: also run the tether variants with this module (keys KEY@alt)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin: by default the measured Envoy runs alone on the first CPU, "
                        "the load generator and the backend on the others")
    p.add_argument("--paired", type=int, metavar="N",
                   help="with --alt-module or --versus: N pairs of short alternating runs of two "
                        "Envoys kept up side by side (the tightest A/B; writes "
                        "bench/results/paired.json)")
    p.add_argument("--versus", metavar="A:B,...",
                   type=lambda s: [tuple(x.split(":", 1)) for x in s.split(",") if x],
                   help="with --paired: variant B against variant A, same module "
                        "(e.g. native:wasm-sticky,native-new:wasm-sticky-new)")
    p.add_argument("--render", metavar="JSON", help="only redo the SVG and Markdown from a results JSON")
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 5)
    a.requests = a.requests or (3000 if q else 20000)
    a.warmup = a.warmup if a.warmup is not None else (300 if q else 2000)
    a.scale = [] if a.no_scale else (a.scale or ([1000, 10000] if q else [1000, 10000, 100000, 1000000]))
    a.scale_rounds = a.scale_rounds or (1 if q else 3)
    a.fill_cap = a.fill_cap or (20.0 if q else 170.0)
    a.fill_budget = a.fill_budget or (30.0 if q else 220.0)
    a.load_starts = a.load_starts or (2 if q else 5)
    for name in ("rounds", "requests", "connections", "scale_rounds", "load_starts"):
        if getattr(a, name) < 1 or getattr(a, name) > 10_000_000:
            p.error(f"--{name.replace('_', '-')} out of range")
    return a


def render(path: Path) -> int:
    res = json.loads(path.read_text())
    for key in ("scale", "scale_native"):
        if res.get(key):
            res[key]["levels"] = {int(k): v for k, v in res[key]["levels"].items()}
    stem = "quick" if res["mode"] == "quick" else "latest"
    write_svg(res, RESULTS / f"{stem}.svg")
    md = markdown(res, f"bench/results/{stem}.svg")
    if stem == "quick":
        (RESULTS / "quick.md").write_text(md + "\n")
    else:
        update_benchmarks_md(md)
    print(md)
    return 0


@contextlib.contextmanager
def bench_with_backend(args):
    """A Bench in a fresh directory, its backend Envoy up; everything stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start_backend()
            yield bench
        finally:
            if bench.backend is not None:
                bench.backend.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(Path(args.render))
    if args.alt_module:
        # A/B of two module builds side by side: every tether variant also runs with the other
        # module, in the same rounds (results in quick.*; BENCHMARKS.md is left alone).
        args.quick = True
        args.alt_module = args.alt_module.resolve()
        for key, (label, kind, cfg, shape) in list(VARIANTS.items()):
            if kind == "tether":
                VARIANTS[f"{key}@alt"] = (f"{label} [{args.alt_module.name}]", kind, cfg, shape)
                if key in STICKY:
                    STICKY.add(f"{key}@alt")
    signal.signal(signal.SIGTERM, _on_term)
    # Every mode drives load with wrk (--paired too).
    if shutil.which("wrk") is None:
        print("wrk not found: `apt-get install -y wrk` (make bench does it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        PIN["front"], PIN["load"] = {cpus[0]}, set(cpus[1:])
    if args.paired:
        if not args.alt_module and not args.versus:
            print("--paired needs --alt-module or --versus", file=sys.stderr)
            return 2
        unknown = [k for pair in args.versus or [] for k in pair if k not in VARIANTS]
        if unknown or any(len(pair) != 2 for pair in args.versus or []):
            print(f"--versus: pairs of variants A:B, unknown: {unknown}", file=sys.stderr)
            return 2
        args.module = args.module or harness.WASM.resolve()
        RESULTS.mkdir(parents=True, exist_ok=True)
        what = (f"A {args.module.name}, B {args.alt_module.name}" if args.alt_module
                else "variants " + ", ".join(f"{a} vs {b}" for a, b in args.versus))
        log(f"paired A/B: {what}, {args.paired} pairs x {args.requests} requests")
        with bench_with_backend(args) as bench:
            res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "machine": machine_info(), "a": str(args.module),
                   "b": str(args.alt_module or args.module), "versus": args.versus,
                   "pairs": args.paired, "requests": args.requests,
                   "variants": bench.paired(args.paired)}
        (RESULTS / "paired.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        log(f"done in {time.monotonic() - started:.0f} s: bench/results/paired.json")
        return 0
    if not harness.WASM.exists():
        print(f"module {harness.WASM} missing: run `make build`", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    info = machine_info()
    module = module_info()
    log(f"{'quick' if args.quick else 'full'} run: {args.rounds} rounds x {len(VARIANTS)} variants x "
        f"{args.requests} requests; scale {args.scale}; module {module['bytes']} bytes")
    with bench_with_backend(args) as bench:
        runs = bench.variant_rounds()
        log("module load time")
        load = bench.load_time_samples(args.load_starts)
        scale = (bench.scale("tether"), bench.scale("tether-native")) if args.scale else None
        res = summarize(runs, scale, load, module, info, args, bench.checks, started)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    write_svg(res, RESULTS / f"{stem}.svg")
    md = markdown(res, f"bench/results/{stem}.svg")
    if args.quick:
        (RESULTS / "quick.md").write_text(md + "\n")
    else:
        update_benchmarks_md(md)
    log(f"done in {time.monotonic() - started:.0f} s: bench/results/{stem}.json, {stem}.svg"
        + ("" if args.quick else ", BENCHMARKS.md"))
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
