"""tether as an Envoy dynamic module (`make build-native`): Envoy loads target/native/libtether.so
with the shipped envoy/native.yaml (only its ports, endpoints and plugin JSON moved), reports the
ABI version as matched, pins sessions through the override-host call on a plain round-robin
cluster, and refuses a bad configuration naming the field. The symbol test holds the module's
ABI declarations to the Envoy binary the project installs."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import harness
from harness import HOST, Backend, Client, Envoy

NATIVE_DIR = harness.REPO / "target" / "native"
NATIVE_SO = NATIVE_DIR / "libtether.so"
NATIVE_YAML = harness.REPO / "envoy" / "native.yaml"
LOG_ARGS = ("--log-level", "info", "--component-log-level", "dynamic_modules:debug")
MATCHED = "Dynamic module ABI version v0.2.0 matched."


def native_filter(cfg: dict) -> dict:
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    found = [f for f in hcm["http_filters"] if f.get("name") == harness.FILTER]
    assert len(found) == 1, f"expected one `{harness.FILTER}` filter in {NATIVE_YAML}"
    return found[0]


def native_config(admin_port: int, port: int, backend_ports: list[int],
                  plugin_config: dict | str | None = None) -> dict:
    """envoy/native.yaml with only its ports, endpoints and (optionally) plugin JSON changed."""
    cfg = harness.yaml_load(NATIVE_YAML)
    cfg["admin"]["address"]["socket_address"].update(address=HOST, port_value=admin_port)
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"].update(
        address=HOST, port_value=port)
    if plugin_config is not None:
        value = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        native_filter(cfg)["typed_config"]["filter_config"]["value"] = value
    cluster = harness._cluster(cfg)
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": HOST, "port_value": p}}}}
        for p in backend_ports]}]
    return cfg


@pytest.fixture(scope="module", autouse=True)
def search_path():
    """Envoy finds lib<name>.so in ENVOY_DYNAMIC_MODULES_SEARCH_PATH (inherited by every Envoy
    these tests start)."""
    if not NATIVE_SO.exists():
        pytest.fail(f"{NATIVE_SO} does not exist: run `make build-native`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE_DIR))
        yield


@contextlib.contextmanager
def native_stack(workdir: Path, plugin_config=None, make_config=None):
    """Three backends and one Envoy running envoy/native.yaml (or the config
    `make_config(backend ports)` gives): (envoy, backends by name); all stopped, always; Envoy
    must have stayed up with no panic or critical line."""
    workdir.mkdir(parents=True, exist_ok=True)
    backends = {f"backend-{i}": Backend(f"backend-{i}", workdir) for i in (1, 2, 3)}
    envoy = None
    try:
        for b in backends.values():
            b.start()
        ports = [b.port for b in backends.values()]
        config = (make_config(ports) if make_config is not None else
                  native_config(harness.free_port(), harness.free_port(), ports, plugin_config))
        envoy = Envoy(workdir, ports, log_args=LOG_ARGS, config=config)
        harness.ACTIVE_ENVOYS.append(envoy)
        envoy.start()
        yield envoy, backends
        assert envoy.alive(), "envoy died"
        assert envoy.bad_log_lines() == []
    finally:
        if envoy is not None:
            envoy.stop()
            if envoy in harness.ACTIVE_ENVOYS:
                harness.ACTIVE_ENVOYS.remove(envoy)
        for b in backends.values():
            b.stop()


@pytest.fixture(scope="module")
def native(tmp_path_factory, search_path):
    """The shipped configuration, shared by the tests of this module that only send requests."""
    with native_stack(tmp_path_factory.mktemp("native")) as (envoy, _):
        yield envoy


def pin_and_kill(envoy: Envoy, backends: dict[str, Backend]) -> tuple[Client, str]:
    """A client pinned to an endpoint (3 requests there), and that endpoint killed."""
    client = Client(envoy.port)
    pinned = client.request("/").backend
    for _ in range(3):
        assert client.request("/").backend == pinned
    backends[pinned].kill()
    return client, pinned


def first_request(port: int):
    """One request from a client with no session: where a new session lands."""
    client = Client(port, fresh=True)
    try:
        return client.request("/")
    finally:
        client.close()


def test_envoy_reports_the_abi_version_matched(native):
    assert MATCHED in native.log()


def test_the_shipped_cluster_has_no_override_host_policy():
    # What the pinning tests below measure: a plain round-robin cluster, nothing reading a
    # routing header.
    cluster = harness._cluster(harness.yaml_load(NATIVE_YAML))
    assert "load_balancing_policy" not in cluster
    assert cluster.get("lb_policy") == "ROUND_ROBIN"
    assert "x-tether-host" not in NATIVE_YAML.read_text()


def test_a_cookie_session_stays_on_its_endpoint(native):
    client = Client(native.port)
    try:
        first = client.request("/")
        assert first.status == 200
        assert first.set_cookie(harness.COOKIE) is not None, first
        pinned = first.backend
        seen = []
        for _ in range(10):
            r = client.request("/")
            assert r.status == 200, r
            seen.append(r.backend)
            # The endpoint is handed to Envoy by the override-host call: no routing header is
            # ever forwarded.
            assert "x-tether-host" not in {k.lower() for k in r.echoed_headers()}
        assert seen == [pinned] * 10, seen
    finally:
        client.close()


def test_new_sessions_are_load_balanced(native):
    seen = Counter()
    for _ in range(12):
        r = first_request(native.port)
        assert r.status == 200 and r.set_cookie(harness.COOKIE) is not None, r
        seen[r.backend] += 1
    assert len(seen) == 3, seen


def test_sessions_on_several_endpoints_each_stay(native):
    pinned: dict[str, Client] = {}
    try:
        for _ in range(30):
            if len(pinned) == 3:
                break
            c = Client(native.port)
            backend = c.request("/").backend
            if backend in pinned:
                c.close()
            else:
                pinned[backend] = c
        assert len(pinned) == 3, list(pinned)
        for _ in range(3):
            for backend, c in pinned.items():
                assert c.request("/").backend == backend
    finally:
        for c in pinned.values():
            c.close()


def test_a_session_whose_endpoint_died_moves_with_no_failed_request(tmp_path):
    # The retry after the failed connection goes to another endpoint of the round-robin cluster,
    # and tether re-binds the session there.
    with native_stack(tmp_path) as (envoy, backends):
        client, dead = pin_and_kill(envoy, backends)
        try:
            moved = client.request("/")
            assert moved.status == 200 and moved.backend != dead, moved
            assert moved.set_cookie(harness.COOKIE) is not None, moved
            for _ in range(5):
                assert client.request("/").backend == moved.backend
        finally:
            client.close()
        assert "decision=rebind" in envoy.log()


def test_a_strict_session_is_refused_when_its_endpoint_died(tmp_path):
    plugin = {"type": "cookie", "on_unavailable": "strict", "retry_after": "2s"}
    with native_stack(tmp_path, plugin) as (envoy, backends):
        client, _ = pin_and_kill(envoy, backends)
        try:
            for _ in range(3):
                r = client.request("/")
                assert r.status == 503, r
                assert r.header("retry-after") == ["2"], r
                assert r.body == b"session endpoint unavailable\n"
        finally:
            client.close()
        assert "decision=strict_refusal" in envoy.log()


def test_a_route_named_in_the_config_gets_its_own_policy(tmp_path):
    # Envoy's route name (`xds.route_name`) picks the route's policy: source_ip, which keeps its
    # sessions in the process-wide binding table and reads the client's address.
    plugin = {"type": "cookie", "routes": {"app": {"type": "source_ip", "session_name": "src"}}}
    with native_stack(tmp_path, plugin) as (envoy, _):
        seen = set()
        for _ in range(6):
            r = first_request(envoy.port)
            assert r.status == 200 and r.set_cookies == [], r
            seen.add(r.backend)
        assert len(seen) == 1, seen
        assert "binding table ready" in envoy.log()


def test_metrics_carry_the_same_names(native):
    # Workers hand their figures over once a second, from Envoy's main thread: they arrive with
    # no further traffic to carry them.
    def arrived():
        stats = native.stats("tether_")
        issued = sum(v for k, v in stats.items() if k.endswith("tether_sessions_issued"))
        hits = sum(v for k, v in stats.items() if k.endswith("tether_hits"))
        return issued > 0 and hits >= 10
    harness.wait_until(arrived, 6.0, interval=0.1, what="tether_* figures")
    names = set(native.stats("tether_"))
    assert "dynamicmodulescustom.tether_sessions_issued" in names, names
    assert "dynamicmodulescustom.tether_hits" in names, names


def test_decisions_are_logged(native):
    log = native.log()
    assert re.search(r"tether\[\d+\]: decision=", log), "no decision line at debug level"


def validate_native(plugin_config, workdir: Path) -> tuple[int, str]:
    """`envoy --mode validate` of envoy/native.yaml with this plugin JSON: (exit code, output)."""
    cfg = native_config(harness.free_port(), harness.free_port(), [harness.free_port()],
                        plugin_config)
    path = harness.write_config(cfg, workdir / "native.yaml")
    proc = subprocess.run(
        [harness.envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
         "--base-id", str(harness.unique_base_id()), *LOG_ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        timeout=90, cwd=str(workdir))
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def refusal(code: int, out: str) -> str:
    """The one line a refused configuration logged."""
    assert code != 0, out
    lines = [l for l in out.splitlines() if "tether: invalid plugin configuration" in l]
    assert len(lines) == 1, out
    return lines[0]


def test_a_bad_config_is_refused_naming_the_field(tmp_path):
    line = refusal(*validate_native({"type": "cookie", "cookie": {"same_site": "sideways"}},
                                    tmp_path))
    assert "cookie.same_site" in line, line


def test_the_shipped_file_validates(tmp_path):
    code, out = validate_native(None, tmp_path)
    assert code == 0, out
    assert MATCHED in out


def symbols(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], check=True, stdout=subprocess.PIPE,
                         timeout=60).stdout.decode()
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_every_imported_callback_exists_and_every_expected_hook_is_exported():
    envoy = Path(harness.envoy_binary())
    provided = symbols(envoy, "--defined-only")
    imported = {s for s in symbols(NATIVE_SO, "--undefined-only")
                if s.startswith("envoy_dynamic_module_callback_")}
    assert imported, "the module imports no Envoy callback"
    assert imported - provided == set(), "callbacks this Envoy does not have"
    # The hooks Envoy looks up by name are strings in its binary.
    strings = subprocess.run(["strings", "-n", "20", str(envoy)], check=True,
                             stdout=subprocess.PIPE, timeout=120).stdout.decode("latin-1")
    expected = set(re.findall(r"^(envoy_dynamic_module_on_http_filter_\w+)$", strings, re.M))
    expected.add("envoy_dynamic_module_on_program_init")
    assert len(expected) > 20, expected
    exported = symbols(NATIVE_SO, "--defined-only")
    assert expected - exported == set(), "hooks Envoy expects that the module does not export"
