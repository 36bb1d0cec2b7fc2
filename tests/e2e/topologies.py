"""Topologies beyond one Envoy in front of envoy/envoy.yaml's `app` cluster.

Replicas (several Envoy processes), the canary split (two clusters), draining (an EDS file Envoy
watches): each starts from one of the shipped envoy/*.yaml files, loaded with PyYAML and changed
in memory only where a test must (ports, endpoints, file paths, the plugin JSON), exactly like
harness.build_config does for envoy/envoy.yaml. The processes are harness's Backend and a
subclass of harness's Envoy, so logs, /ready, health waits, and the failure-report hook in
conftest.py work the same.
"""
from __future__ import annotations

import base64
import collections
import http.client
import os
import re
import secrets
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

import harness
from harness import HOST, REPO, Backend, Client, Envoy

ENVOY_DIR = REPO / "envoy"


def new_key() -> str:
    """A token key as the plugin config takes it: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def shipped(name: str) -> dict:
    """envoy/<name>, parsed."""
    with open(ENVOY_DIR / name) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------------------------
# finding and changing things in a parsed Envoy config


def hcm(cfg: dict) -> dict:
    listeners = cfg["static_resources"]["listeners"]
    assert len(listeners) == 1, f"expected one listener, found {len(listeners)}"
    (chain,) = listeners[0]["filter_chains"]
    found = [f["typed_config"] for f in chain["filters"]
             if f.get("name") == "envoy.filters.network.http_connection_manager"]
    assert len(found) == 1
    return found[0]


def tether_config(cfg: dict) -> dict:
    """The tether Wasm filter's `config` (name, configuration, vm_config)."""
    found = [f["typed_config"]["config"] for f in hcm(cfg)["http_filters"] if f.get("name") == harness.FILTER]
    assert len(found) == 1, f"expected one tether filter, found {len(found)}"
    return found[0]


def plugin(cfg: dict) -> str:
    return tether_config(cfg)["configuration"]["value"]


def cluster(cfg: dict, name: str) -> dict:
    for c in cfg["static_resources"]["clusters"]:
        if c.get("name") == name:
            return c
    raise KeyError(f"cluster {name!r} not in config")


def routes(cfg: dict) -> list[dict]:
    (vhost,) = hcm(cfg)["route_config"]["virtual_hosts"]
    return vhost["routes"]


def route(cfg: dict, name: str) -> dict:
    for r in routes(cfg):
        if r.get("name") == name:
            return r
    raise KeyError(f"route {name!r} not in config")


def lb_endpoints(ports) -> list[dict]:
    return [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": p}}}}
        for p in ports]}]


def localize(cfg: dict, admin_port: int, listener_port: int, plugin_config=harness.SHIPPED):
    """Loopback ports, the module's absolute path, and (optionally) the plugin JSON."""
    cfg["admin"]["address"]["socket_address"].update(address=HOST, port_value=admin_port)
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address=HOST, port_value=listener_port)
    wasm = tether_config(cfg)
    local = wasm["vm_config"]["code"]["local"]
    path = Path(local["filename"])
    if os.environ.get("TETHER_WASM"):
        path = harness.WASM
    local["filename"] = str(path if path.is_absolute() else REPO / path)
    value = harness.plugin_json(plugin_config)
    if value is not None:
        wasm["configuration"]["value"] = value
    return cfg


# --------------------------------------------------------------------------------------------
# processes


class ShippedEnvoy(Envoy):
    """harness.Envoy, but started from envoy/<yaml_name> rewritten by `build(cfg, envoy)`.

    `build` gets the parsed file with ports and the module path already localized (and the
    plugin JSON replaced when `plugin_config` is given); it changes the rest in place.
    `backend_ports` are the endpoints waited on to be healthy at start.
    """

    def __init__(self, workdir: Path, yaml_name: str, backend_ports, build=None,
                 plugin_config=harness.SHIPPED, concurrency: int = 2, name: str = "envoy",
                 extra_args=()):
        super().__init__(workdir, list(backend_ports), plugin_config=plugin_config,
                         concurrency=concurrency, name=name)
        self.yaml_name = yaml_name
        self.build = build
        self.extra_args = list(extra_args)

    def config(self) -> dict:
        cfg = localize(shipped(self.yaml_name), self.admin_port, self.port, self.plugin_config)
        if self.build is not None:
            self.build(cfg, self)
        return cfg

    def _start_once(self, timeout: float):
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running")
        self.runs += 1
        harness.write_config(self.config(), self.config_path)
        log = self.workdir / f"{self.name}-{self.runs}.log"
        self.log_paths.append(log)
        self._err = open(log, "wb")
        cmd = [harness.envoy_binary(), "-c", str(self.config_path),
               "--concurrency", str(self.concurrency),
               "--disable-hot-restart", "--base-id", str(harness.unique_base_id()),
               "--log-level", "info", "--component-log-level", "wasm:debug,dynamic_modules:debug",
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._err, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.workdir),
                                     start_new_session=True)
        harness._register(self.proc)
        if self not in harness.ACTIVE_ENVOYS:
            harness.ACTIVE_ENVOYS.append(self)
        try:
            harness.wait_until(self._ready_or_dead, timeout, what=f"{self.name} /ready == LIVE")
        except Exception as exc:
            tail = self.log_tail(60)
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}\n--- log tail ---\n{tail}") from exc

    _HEALTH = re.compile(r"^([^:]+)::" + re.escape(HOST) + r":(\d+)::health_flags::(.*)$")

    def cluster_health(self) -> dict[tuple[str, int], str]:
        """(cluster, port) -> health_flags, for every cluster's endpoints."""
        _, body = self.admin("/clusters")
        out = {}
        for line in body.splitlines():
            m = self._HEALTH.match(line.strip())
            if m:
                out[(m.group(1), int(m.group(2)))] = m.group(3)
        return out

    def endpoint_health(self) -> dict[int, str]:
        return {port: flags for (_, port), flags in self.cluster_health().items()}

    def admin_post(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection(HOST, self.admin_port, timeout=timeout)
        try:
            conn.request("POST", path, body=b"")
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def set_runtime(self, **values) -> None:
        """POST /runtime_modify (needs a runtime layer with an admin_layer)."""
        query = urllib.parse.urlencode({k: str(v) for k, v in values.items()})
        status, body = self.admin_post(f"/runtime_modify?{query}")
        assert status == 200, f"/runtime_modify?{query}: {status} {body}"

    def runtime(self) -> dict:
        import json

        _, body = self.admin("/runtime")
        return {k: v.get("final_value") for k, v in json.loads(body)["entries"].items()}

    def decisions(self) -> list[str]:
        return re.findall(r"tether\[\d+\]: (decision=\S+.*)", self.log())

    def client(self, **kw) -> Client:
        return Client(self.port, **kw)


class Topology:
    """Backends and Envoys of one test; close() stops all of them and reports dead Envoys."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.backends: dict[str, Backend] = {}
        self.envoys: list[ShippedEnvoy] = []

    def add_backends(self, n: int, prefix: str = "backend") -> list[Backend]:
        out = []
        first = sum(1 for name in self.backends if name.startswith(prefix + "-")) + 1
        for i in range(first, first + n):
            b = Backend(f"{prefix}-{i}", self.workdir)
            self.backends[b.name] = b
            b.start()
            out.append(b)
        return out

    def by_port(self, port: int) -> Backend:
        for b in self.backends.values():
            if b.port == port:
                return b
        raise KeyError(port)

    def add_envoy(self, yaml_name: str, backend_ports, build=None, start: bool = True,
                  **kw) -> ShippedEnvoy:
        name = kw.pop("name", f"envoy-{len(self.envoys) + 1}")
        envoy = ShippedEnvoy(self.workdir, yaml_name, backend_ports, build=build, name=name, **kw)
        self.envoys.append(envoy)
        if start:
            envoy.start()
        return envoy

    def close(self, check: bool = True):
        problems = []
        for envoy in self.envoys:
            if check and envoy.log_paths:
                if envoy.runs and not envoy.alive() and envoy.proc is not None \
                        and envoy.proc.returncode not in (0, -15):
                    problems.append(f"{envoy.name} died (exit code {envoy.proc.returncode})\n"
                                    f"{envoy.log_tail(40)}")
                elif envoy.alive() and not envoy.ready():
                    problems.append(f"{envoy.name}: /ready is not LIVE")
                bad = envoy.bad_log_lines()
                if bad:
                    problems.append(f"{envoy.name}: panic/critical lines:\n  " + "\n  ".join(bad[:20]))
        for envoy in self.envoys:
            try:
                envoy.stop()
            finally:
                if envoy in harness.ACTIVE_ENVOYS:
                    harness.ACTIVE_ENVOYS.remove(envoy)
        for b in self.backends.values():
            try:
                b.stop()
            except Exception:  # noqa: BLE001
                pass
        if problems:
            raise AssertionError("at the end of the test: " + "\n".join(problems))


@pytest.fixture(scope="module")
def module_topology(request, tmp_path_factory):
    """A Topology shared by a test module, closed (and checked) at its end."""
    if not harness.WASM.exists():
        pytest.fail(f"module {harness.WASM} does not exist: run `make build`")
    topo = Topology(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield topo
    topo.close(check=True)


@pytest.fixture
def topology(request, tmp_path_factory):
    """A Topology in a fresh tmp dir, closed (and checked) after the test."""
    if not harness.WASM.exists():
        pytest.fail(f"module {harness.WASM} does not exist: run `make build`")
    topo = Topology(tmp_path_factory.mktemp(request.node.name[:40]))
    yield topo
    topo.close(check=True)


# --------------------------------------------------------------------------------------------
# files Envoy watches


def write_atomically(path: Path, text: str) -> None:
    """Write a sibling temp file, then rename it over `path` (what a file watcher must see)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)




def with_endpoints(ports_by_cluster: dict[str, list[int]], then=None):
    """A `build` for ShippedEnvoy: these clusters get exactly these loopback endpoints."""

    def build(cfg, envoy):
        for name, ports in ports_by_cluster.items():
            cluster(cfg, name)["load_assignment"]["endpoints"] = lb_endpoints(ports)
        if then is not None:
            then(cfg, envoy)

    return build


def new_sessions(envoy: ShippedEnvoy, n: int, path: str) -> "collections.Counter[str]":
    """`n` clients without a cookie: where their new sessions land (each must get a cookie)."""
    landed = collections.Counter()
    for _ in range(n):
        c = envoy.client()
        try:
            r = c.request(path)
        finally:
            c.close()
        assert r.status == 200 and r.set_cookie(harness.COOKIE) is not None, r
        landed[r.backend] += 1
    return landed


def count_decisions(envoy: ShippedEnvoy, kind: str) -> int:
    """How many `decision=<kind>` lines tether logged so far."""
    return sum(1 for d in envoy.decisions() if d.startswith(f"decision={kind} "))


def wait_decisions(envoy: ShippedEnvoy, kind: str, at_least: int, timeout: float = 3.0) -> int:
    """Envoy writes its log asynchronously: wait (bounded) for `at_least` such lines."""
    try:
        return harness.wait_until(lambda: (n := count_decisions(envoy, kind)) >= at_least and n,
                                  timeout, what=f"{at_least} decision={kind} lines")
    except TimeoutError:
        return count_decisions(envoy, kind)
