"""The shipped `stats_tags` in a real Envoy, on stat names no loopback test reaches: IPv6
endpoints, and cluster names holding dots, `|`, `=` and even `.endpoint=`. Each source is run:
envoy/envoy.yaml, and what the Istio and Envoy Gateway manifests merge into their Envoy's
bootstrap (deploy/istio/stats-tags.yaml, deploy/envoy-gateway/envoyproxy.yaml).

A tiny proxy-wasm module (assembled here from text) defines counters under names of the form
`src/endpoints.rs` writes (`Series::stat_name`, whose unit test pins the same form) and moves
each by its own amount; /stats/prometheus must show each as its family with the exact cluster
and endpoint as tags.
"""
import re
import subprocess

import pytest
import yaml

import harness
from test_endpoint_metrics import samples
from test_manifests import manifest_stats_configs

WASM_AS = harness.REPO / ".tools" / "node_modules" / ".bin" / "wasm-as"

# (stat name, family, cluster or None, endpoint)
NAMES = [
    ("tether_endpoint_hits.cluster=app.endpoint=10.0.0.7:8080",
     "tether_endpoint_hits", "app", "10.0.0.7:8080"),
    ("tether_endpoint_hits.cluster=outbound|8080||app.ns.svc.cluster.local.endpoint=[2001:db8::7]:8080",
     "tether_endpoint_hits", "outbound|8080||app.ns.svc.cluster.local", "[2001:db8::7]:8080"),
    ("tether_endpoint_rebinds_away.cluster=odd=.endpoint=x.endpoint=[::1]:9",
     "tether_endpoint_rebinds_away", "odd=.endpoint=x", "[::1]:9"),
    ("tether_endpoint_sessions_issued.cluster=other.endpoint=other",
     "tether_endpoint_sessions_issued", "other", "other"),
    ("tether_endpoint_live_bindings.endpoint=[fe80::1%eth0]:443",
     "tether_endpoint_live_bindings", None, "[fe80::1%eth0]:443"),
]


def module(workdir) -> str:
    """A module whose configure defines each name (a gauge for the bindings) and adds i+3 to it."""
    blob = b""
    calls = []
    for i, (name, family, _, _) in enumerate(NAMES):
        offset = 1024 + len(blob)
        blob += name.encode()
        kind = 1 if family == "tether_endpoint_live_bindings" else 0  # proxy-wasm: 0 counter, 1 gauge
        calls.append(f"(drop (call $define (i32.const {kind}) (i32.const {offset}) "
                     f"(i32.const {len(name)}) (i32.const 512)))"
                     f"(drop (call $inc (i32.load (i32.const 512)) (i64.const {i + 3})))")
    data = "".join(f"\\{b:02x}" for b in blob)
    wat = f"""(module
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $inc (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{data}")
  (global $heap (mut i32) (i32.const 16384))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap)
      (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    {' '.join(calls)}
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_delete") (param i32)))
"""
    src, out = workdir / "names.wat", workdir / "names.wasm"
    src.write_text(wat)
    subprocess.run([str(WASM_AS), str(src), "-o", str(out)], check=True, capture_output=True,
                   timeout=60)
    return str(out)


def stats_config(source: str) -> dict:
    if source == "envoy.yaml":
        return harness.yaml_load(harness.ENVOY_YAML)["stats_config"]
    return manifest_stats_configs()[source]["stats_config"]


def bootstrap(admin_port: int, listener_port: int, wasm: str, source: str) -> dict:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "names",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [
            {"name": "names", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                         "code": {"local": {"filename": wasm}}}}}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "stats_config": stats_config(source),
        "admin": {"address": {"socket_address": {"address": harness.HOST, "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "names",
            "address": {"socket_address": {"address": harness.HOST, "port_value": listener_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}]},
    }


@pytest.mark.parametrize("source", ["envoy.yaml", "istio", "envoy-gateway"])
def test_shipped_stats_tags_yield_the_exact_cluster_and_endpoint(tmp_path, source):
    admin = harness.free_port()
    cfg = tmp_path / "names.yaml"
    cfg.write_text(yaml.safe_dump(bootstrap(admin, harness.free_port(), module(tmp_path),
                                            source)))
    log = open(tmp_path / "envoy.log", "wb")
    proc = subprocess.Popen(
        [harness.envoy_binary(), "-c", str(cfg), "--disable-hot-restart", "--concurrency", "1",
         "-l", "warning"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    harness._register(proc)
    try:
        def exposition():
            if proc.poll() is not None:
                raise harness.GaveUp(f"envoy exited: {(tmp_path / 'envoy.log').read_text()[-2000:]}")
            status, body = harness.http_get(admin, "/stats/prometheus")
            return body if status == 200 and "tether_endpoint_" in body else None

        body = harness.wait_until(exposition, 20.0, interval=0.2, what="the module's metrics")
        got = {}
        for name, labels, value in samples(body):
            if name.startswith("tether_endpoint_"):
                got[(name, labels.get("cluster"), labels.get("endpoint"))] = int(value)
        want = {(family, cluster, endpoint): i + 3
                for i, (_, family, cluster, endpoint) in enumerate(NAMES)}
        shown = "\n".join(l for l in body.splitlines() if "tether" in l)
        assert set(got) == set(want), shown
        # Envoy configures the module once per VM (each added its amounts): the same multiple
        # of each series' own amount, so no two names were merged into one series.
        (times,) = {got[k] // want[k] for k in want}
        assert times >= 1 and all(got[k] == times * want[k] for k in want), shown
        for family in {f for _, f, _, _ in NAMES}:
            assert re.search(rf"^# TYPE {family} (counter|gauge)$", body, re.M), family
    finally:
        harness.stop_process(proc)
        log.close()
