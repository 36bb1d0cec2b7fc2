"""The Kubernetes manifests in deploy/ (Istio, Envoy Gateway) and the Prometheus of
docker-compose.yml, checked so the examples cannot rot:

- every plugin config they carry (WasmPlugin.spec.pluginConfig, EnvoyExtensionPolicy wasm
  config) is turned into the JSON the module receives and loaded, with the built module, by the
  real Envoy (`envoy --mode validate`); the same config with one unknown field must be refused,
  so the check reaches the module;
- every cluster policy they set (the EnvoyFilter's MERGE, the EnvoyPatchPolicy's JSON patch, the
  BackendTrafficPolicy's endpointOverride as Envoy Gateway translates it) is applied to the `app`
  cluster of envoy/envoy.yaml and loaded by the real Envoy;
- they agree with envoy/envoy.yaml (the routing header, the retry policy) and with each other
  (services, routes, clusters, the image);
- a real Envoy running with a manifest's plugin config and cluster policy keeps a session on one
  endpoint and serves /stats/prometheus, which Prometheus (docker-compose.yml) scrapes.

No Kubernetes here: what Istio and Envoy Gateway do with a manifest is reproduced as they
document it (Istio: pluginConfig as JSON, EnvoyFilter MERGE as a proto merge; Envoy Gateway: wasm
config as JSON, JSON patches on the proto-named cluster, endpointOverride as an override_host
policy with the `loadBalancer.type` as fallback).
"""
from __future__ import annotations

import copy
import http.client
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import harness
from harness import REPO, build_config, envoy_binary, unique_base_id, wait_until, write_config

DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = REPO / "docker-compose.yml"
OVERRIDE_HOST = "envoy.load_balancing_policies.override_host"
ROUND_ROBIN = "envoy.load_balancing_policies.round_robin"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
# A field no tether config has: added to a manifest's config, the module must refuse it.
BOGUS = "tether_manifest_check_bogus_field"

# The API group/version of every kind a manifest may use: a typo, or a kind the checks below do
# not know, fails instead of being skipped.
KNOWN = {
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("extensions.istio.io/v1alpha1", "WasmPlugin"),
    ("networking.istio.io/v1alpha3", "EnvoyFilter"),
    ("networking.istio.io/v1", "Gateway"),
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("gateway.networking.k8s.io/v1", "Gateway"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyExtensionPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyPatchPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
    ("v1", "ConfigMap"),
}

# Envoy Gateway's fallback for each `loadBalancer.type` under endpointOverride (its translator,
# buildFallbackLoadBalancingPolicy).
EG_FALLBACK = {
    "RoundRobin": (ROUND_ROBIN,
                   "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"),
    "LeastRequest": ("envoy.load_balancing_policies.least_request",
                     "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"),
    "Random": ("envoy.load_balancing_policies.random",
               "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random"),
}


# --------------------------------------------------------------------------------------------
# reading the manifests


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/ but Prometheus' and Grafana's own configuration (checked
    by test_dashboards.py)."""
    own = (PROMETHEUS_YML.parent, DEPLOY / "grafana")
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml")
                   and not any(d in p.parents for d in own))
    return files


def load_manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in manifest_files():
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    docs.append((f"{path.relative_to(REPO)}#{i}", doc))
    return docs


MANIFESTS = load_manifests()


def of_kind(kind: str, api_group: str | None = None) -> list[dict]:
    return [d for _, d in MANIFESTS if d.get("kind") == kind
            and (api_group is None or d.get("apiVersion", "").startswith(api_group + "/"))]


def one(kind: str, api_group: str | None = None) -> dict:
    found = of_kind(kind, api_group)
    assert len(found) == 1, f"expected one {kind} ({api_group}) under deploy/, found {len(found)}"
    return found[0]


def plugin_configs() -> dict[str, dict]:
    """label -> the plugin config a manifest hands tether."""
    out = {}
    for d in of_kind("WasmPlugin"):
        out[f"WasmPlugin/{d['metadata']['name']}"] = d["spec"]["pluginConfig"]
    for d in of_kind("EnvoyExtensionPolicy"):
        for i, wasm in enumerate(d["spec"].get("wasm", [])):
            out[f"EnvoyExtensionPolicy/{d['metadata']['name']}/wasm/{i}"] = wasm["config"]
    return out


PLUGIN_CONFIGS = plugin_configs()


def as_module_json(config: dict) -> str:
    """The string the module receives: Istio marshals pluginConfig (a protobuf Struct) to JSON,
    Envoy Gateway passes the wasm config's JSON through."""
    return json.dumps(config)


# --------------------------------------------------------------------------------------------
# envoy/envoy.yaml, the source of truth


def shipped() -> dict:
    return harness.yaml_load(harness.ENVOY_YAML)


def shipped_cluster() -> dict:
    return harness._cluster(shipped())


def shipped_override_host(cluster: dict | None = None) -> dict:
    policies = (cluster or shipped_cluster())["load_balancing_policy"]["policies"]
    ext = policies[0]["typed_extension_config"]
    assert ext["name"] == OVERRIDE_HOST
    return ext["typed_config"]


def shipped_route(name: str = "app") -> dict:
    hcm = shipped()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for vhost in hcm["typed_config"]["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route.get("name") == name:
                return route
    raise AssertionError(f"route {name!r} not in {harness.ENVOY_YAML}")


def shipped_host_header() -> str:
    sources = shipped_override_host()["override_host_sources"]
    assert len(sources) == 1 and "header" in sources[0], sources
    return sources[0]["header"]


def policy_names(lb_policy: dict) -> list[str]:
    """Every policy name in a load_balancing_policy, nested fallbacks included."""
    names = []

    def walk(node):
        if isinstance(node, dict):
            ext = node.get("typed_extension_config")
            if isinstance(ext, dict) and "name" in ext:
                names.append(ext["name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(lb_policy)
    return names


def override_host_of(lb_policy: dict) -> dict:
    ext = lb_policy["policies"][0]["typed_extension_config"]
    assert ext["name"] == OVERRIDE_HOST, f"first policy is {ext['name']}, not {OVERRIDE_HOST}"
    return ext["typed_config"]


# --------------------------------------------------------------------------------------------
# what Istio and Envoy Gateway do to the cluster


def proto_merge(dst: dict, src: dict) -> dict:
    """Istio's EnvoyFilter MERGE (a protobuf merge): messages merge field by field, repeated
    fields are appended, scalars are replaced."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            proto_merge(dst[key], value)
        elif isinstance(value, list) and isinstance(dst.get(key), list):
            dst[key] = dst[key] + copy.deepcopy(value)
        else:
            dst[key] = copy.deepcopy(value)
    return dst


def json_patch_add(doc: dict, path: str, value) -> dict:
    """RFC 6902 `add` to an object member (what the EnvoyPatchPolicy uses)."""
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
    assert tokens, f"add at the document root is not what tether's patch does: {path!r}"
    node = doc
    for t in tokens[:-1]:
        assert isinstance(node, dict) and t in node, f"JSON patch path {path!r}: no {t!r}"
        node = node[t]
    assert isinstance(node, dict), f"JSON patch path {path!r} does not end in an object"
    node[tokens[-1]] = copy.deepcopy(value)
    return doc


def istio_gateway_cluster() -> dict:
    """The `app` cluster the way Istio generates a gateway cluster's load balancing: no
    load_balancing_policy, `lb_policy: LEAST_REQUEST` (Istio's default)."""
    cluster = copy.deepcopy(shipped_cluster())
    del cluster["load_balancing_policy"]
    cluster["lb_policy"] = "LEAST_REQUEST"
    return cluster


def envoy_gateway_cluster() -> dict:
    """The `app` cluster the way Envoy Gateway generates one: a least_request
    load_balancing_policy (its default) and an empty common_lb_config."""
    cluster = copy.deepcopy(shipped_cluster())
    cluster["load_balancing_policy"] = {"policies": [{"typed_extension_config": {
        "name": "envoy.load_balancing_policies.least_request",
        "typed_config": {"@type": EG_FALLBACK["LeastRequest"][1]}}}]}
    cluster["common_lb_config"] = {}
    return cluster


def envoy_filter_clusters() -> dict[str, dict]:
    out = {}
    for ef in of_kind("EnvoyFilter"):
        for i, patch in enumerate(ef["spec"]["configPatches"]):
            if patch["applyTo"] != "CLUSTER":
                continue
            assert patch["patch"]["operation"] == "MERGE", patch
            cluster = proto_merge(istio_gateway_cluster(), patch["patch"]["value"])
            out[f"EnvoyFilter/{ef['metadata']['name']}/{i}"] = cluster
    return out


def patch_policy_clusters() -> dict[str, dict]:
    out = {}
    for epp in of_kind("EnvoyPatchPolicy"):
        for i, p in enumerate(epp["spec"]["jsonPatches"]):
            if p["type"] != CLUSTER_TYPE:
                continue
            op = p["operation"]
            assert op["op"] == "add", f"the check knows `add` only, not {op['op']!r}"
            cluster = json_patch_add(envoy_gateway_cluster(), op["path"], op["value"])
            out[f"EnvoyPatchPolicy/{epp['metadata']['name']}/{i}"] = cluster
    return out


def endpoint_override_policy(lb: dict) -> dict:
    """BackendTrafficPolicy `loadBalancer` with endpointOverride, as Envoy Gateway translates it
    (buildEndpointOverrideLoadBalancingPolicy): override_host over the `extractFrom` headers,
    the `type`'s policy as fallback."""
    assert lb["type"] in EG_FALLBACK, f"loadBalancer.type {lb['type']!r}: the check knows {list(EG_FALLBACK)}"
    name, type_url = EG_FALLBACK[lb["type"]]
    sources = [{"header": s["header"]} for s in lb["endpointOverride"]["extractFrom"]]
    return {"policies": [{"typed_extension_config": {"name": OVERRIDE_HOST, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        "override_host_sources": sources,
        "fallback_policy": {"policies": [{"typed_extension_config": {
            "name": name, "typed_config": {"@type": type_url}}}]}}}}]}


def backend_traffic_clusters() -> dict[str, dict]:
    out = {}
    for btp in of_kind("BackendTrafficPolicy"):
        lb = btp["spec"].get("loadBalancer")
        if lb and "endpointOverride" in lb:
            cluster = envoy_gateway_cluster()
            cluster["load_balancing_policy"] = endpoint_override_policy(lb)
            out[f"BackendTrafficPolicy/{btp['metadata']['name']}"] = cluster
    return out


def cluster_policies() -> dict[str, dict]:
    """label -> the `app` cluster as each manifest leaves it."""
    out = {}
    out.update(envoy_filter_clusters())
    out.update(patch_policy_clusters())
    out.update(backend_traffic_clusters())
    return out


CLUSTERS = cluster_policies()


def with_cluster(cluster: dict, module: bool = True):
    """A build_config mutation: the `app` cluster as a manifest leaves it (and, with
    module=False, no tether filter)."""
    def mutate(cfg):
        if not module:
            hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            filters = hcm["typed_config"]["http_filters"]
            filters[:] = [f for f in filters if f.get("name") != harness.FILTER]
        clusters = cfg["static_resources"]["clusters"]
        for i, c in enumerate(clusters):
            if c.get("name") == harness.CLUSTER:
                replacement = copy.deepcopy(cluster)
                # keep what the harness changed (endpoints), take the rest from the manifest
                replacement["load_assignment"] = c["load_assignment"]
                clusters[i] = replacement
                return
        raise AssertionError("no app cluster")
    return mutate


# --------------------------------------------------------------------------------------------
# running Envoy


def envoy_validate(cfg: dict, workdir: Path, timeout: float = 90.0) -> tuple[int, str]:
    """`envoy --mode validate` of a whole config (exit code, output)."""
    fd, name = tempfile.mkstemp(prefix="manifest-", suffix=".yaml", dir=workdir)
    os.close(fd)
    path = write_config(cfg, Path(name))
    cmd = [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
           "--base-id", str(unique_base_id()), "--log-level", "info",
           "--component-log-level", "wasm:debug"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=timeout, cwd=str(workdir))
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def tail(output: str, n: int = 20) -> str:
    return "\n".join(output.splitlines()[-n:])


@pytest.fixture(scope="module")
def validations(tmp_path_factory):
    """Every `envoy --mode validate` of this module at once, in parallel."""
    if not harness.WASM.exists():
        pytest.fail(f"module {harness.WASM} does not exist: run `make build`")
    work = tmp_path_factory.mktemp("manifests")
    jobs = {}
    for label, config in PLUGIN_CONFIGS.items():
        jobs[("plugin", label)] = build_config(plugin_config=as_module_json(config))
        jobs[("plugin-broken", label)] = build_config(
            plugin_config=as_module_json({**config, BOGUS: True}))
    for label, cluster in CLUSTERS.items():
        # The cluster alone: without the module, Envoy validates in a fraction of the time.
        jobs[("cluster", label)] = build_config(mutate=with_cluster(cluster, module=False))
        # Envoy refuses load_balancing_policy with locality-weighted load balancing (the
        # caveat in deploy/istio/envoyfilter.yaml): the cluster check can fail.
        refused = copy.deepcopy(cluster)
        refused["common_lb_config"] = {"locality_weighted_lb_config": {}}
        jobs[("cluster-locality", label)] = build_config(mutate=with_cluster(refused, module=False))
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {key: pool.submit(envoy_validate, cfg, work) for key, cfg in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


# --------------------------------------------------------------------------------------------
# the manifests themselves


def test_every_manifest_is_a_known_kind():
    assert MANIFESTS, "no manifests under deploy/"
    for where, doc in MANIFESTS:
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in KNOWN, f"{where}: {key} is not a kind these checks know: {sorted(KNOWN)}"
        meta = doc.get("metadata") or {}
        assert meta.get("name") and meta.get("namespace"), f"{where}: name and namespace, please"
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    for needed in ("WasmPlugin", "EnvoyFilter", "EnvoyExtensionPolicy", "BackendTrafficPolicy",
                   "EnvoyPatchPolicy"):
        assert needed in kinds, f"no {needed} under deploy/"
    assert len(PLUGIN_CONFIGS) >= 2, PLUGIN_CONFIGS.keys()
    assert len(CLUSTERS) >= 3, CLUSTERS.keys()


@pytest.mark.parametrize("label", list(PLUGIN_CONFIGS))
def test_plugin_config_loads_in_envoy(validations, label):
    code, output = validations[("plugin", label)]
    assert code == 0, f"{label}: Envoy refused the manifest's plugin config:\n{tail(output)}"


@pytest.mark.parametrize("label", list(PLUGIN_CONFIGS))
def test_plugin_config_with_a_bad_field_is_refused(validations, label):
    """The check above reaches the module: the same config with one unknown field fails."""
    code, output = validations[("plugin-broken", label)]
    assert code != 0, f"{label}: a config with {BOGUS} was accepted:\n{tail(output)}"
    assert any("wasm log" in line and BOGUS in line for line in output.splitlines()), \
        f"{label}: tether did not name {BOGUS}:\n{tail(output)}"


@pytest.mark.parametrize("label", list(CLUSTERS))
def test_cluster_policy_loads_in_envoy(validations, label):
    code, output = validations[("cluster", label)]
    assert code == 0, f"{label}: Envoy refused the cluster:\n{tail(output)}"
    code, output = validations[("cluster-locality", label)]
    assert code != 0 and "load_balancing_policy cannot be combined" in output, \
        f"{label}: with locality_weighted_lb_config Envoy should refuse:\n{tail(output)}"


@pytest.mark.parametrize("label", list(CLUSTERS))
def test_cluster_policy_matches_envoy_yaml(label):
    """override_host reading the header of envoy/envoy.yaml, round robin for new sessions."""
    policy = CLUSTERS[label]["load_balancing_policy"]
    mine = override_host_of(policy)
    assert mine["override_host_sources"] == shipped_override_host()["override_host_sources"]
    assert policy_names(mine["fallback_policy"]) == [ROUND_ROBIN]
    assert ROUND_ROBIN in policy_names(shipped_override_host()["fallback_policy"])


@pytest.mark.parametrize("label", list(PLUGIN_CONFIGS))
def test_plugin_config_sets_the_header_the_cluster_policies_read(label):
    header = shipped_host_header()
    upstream = PLUGIN_CONFIGS[label].get("upstream") or {}
    # Written out, not left to the default, so the contract is in the manifest.
    assert upstream.get("host_header") == header, f"{label}: upstream.host_header is not {header!r}"
    assert "cluster_header" not in upstream, "no route of these manifests matches a cluster header"
    for cluster_label, cluster in CLUSTERS.items():
        sources = override_host_of(cluster["load_balancing_policy"])["override_host_sources"]
        assert sources == [{"header": upstream["host_header"]}], cluster_label


def test_retry_policies_match_envoy_yaml():
    want = shipped_route()["route"]["retry_policy"]
    want_on = set(want["retry_on"].split(","))
    assert any(p["name"] == "envoy.retry_host_predicates.previous_hosts"
               for p in want["retry_host_predicate"])

    vs = one("VirtualService")
    routes = [r for r in vs["spec"]["http"] if r.get("retries")]
    assert routes, "the VirtualService has no retries"
    for r in routes:
        retries = r["retries"]
        assert set(retries["retryOn"].split(",")) == want_on
        assert retries["attempts"] == want["num_retries"]
        # A per-try timeout would retry a slow pod's request on another and move its session.
        assert "per_try_timeout" not in want and "perTryTimeout" not in retries
        assert r.get("timeout", "0s") == "0s", "a route timeout would cut long-polls and streams"
        # Istio drops the previous_hosts predicate when this is false.
        assert retries.get("retryIgnorePreviousHosts", True) is True

    btp = one("BackendTrafficPolicy")["spec"]["retry"]
    assert set(btp["retryOn"]["triggers"]) == want_on
    assert btp["numRetries"] == want["num_retries"]
    assert "timeout" not in btp.get("perRetry", {})
    rules = one("HTTPRoute")["spec"]["rules"]
    assert all(rule.get("timeouts", {}).get("request") == "0s" for rule in rules)
    assert shipped_route()["route"]["timeout"] == "0s"


def test_health_checks_match_envoy_yaml():
    cluster = shipped_cluster()
    http_check = cluster["health_checks"][0]["http_health_check"]
    outlier = cluster["outlier_detection"]
    hc = one("BackendTrafficPolicy")["spec"]["healthCheck"]
    assert hc["active"]["type"] == "HTTP" and hc["active"]["http"]["path"] == http_check["path"]
    dr = one("DestinationRule")["spec"]["trafficPolicy"]["outlierDetection"]
    for got in (hc["passive"], dr):
        assert got["consecutiveLocalOriginFailures"] == outlier["consecutive_local_origin_failure"]
        assert got["splitExternalLocalOriginErrors"] == outlier["split_external_local_origin_errors"]
        assert got["interval"] == outlier["interval"]
        assert got["baseEjectionTime"] == outlier["base_ejection_time"]
    assert hc["passive"]["consecutive5XxErrors"] == outlier["consecutive_5xx"]
    assert dr["consecutive5xxErrors"] == outlier["consecutive_5xx"]
    # A consistent hash would drop Istio's previous_hosts retry predicate, and the EnvoyFilter
    # sets the cluster's policy anyway.
    assert "loadBalancer" not in one("DestinationRule")["spec"]["trafficPolicy"]


def service_and_port() -> tuple[dict, int]:
    svc = one("Service")
    ports = svc["spec"]["ports"]
    assert len(ports) == 1
    return svc, ports[0]["port"]


def test_upstream_idle_timeouts_match_envoy_yaml():
    options = shipped_cluster()["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    want = options["common_http_protocol_options"]["idle_timeout"]
    dr = one("DestinationRule")["spec"]["trafficPolicy"]
    assert dr["connectionPool"]["http"]["idleTimeout"] == want
    btp = one("BackendTrafficPolicy")["spec"]
    assert btp["timeout"]["http"]["connectionIdleTimeout"] == want


    svc, port = service_and_port()
    dep = one("Deployment")
    assert dep["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    container = dep["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[command.index("--port") + 1] == str(svc["spec"]["ports"][0]["targetPort"])
    assert command[command.index("--address") + 1] == "0.0.0.0"
    script = Path(command[1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    (name, path), = mounts.items()
    assert str(script.parent) == path and script.name == harness.BACKEND_PY.name
    assert "configMap" in volumes[name]
    assert container["readinessProbe"]["httpGet"]["path"] == \
        shipped_cluster()["health_checks"][0]["http_health_check"]["path"]


def test_istio_manifests_agree():
    svc, port = service_and_port()
    fqdn = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    wp = one("WasmPlugin")
    ef = one("EnvoyFilter")
    gw = one("Gateway", "networking.istio.io")
    vs = one("VirtualService")
    dr = one("DestinationRule")
    labels = wp["spec"]["selector"]["matchLabels"]
    assert ef["spec"]["workloadSelector"]["labels"] == labels == gw["spec"]["selector"]
    assert wp["metadata"]["namespace"] == ef["metadata"]["namespace"]
    (patch,) = ef["spec"]["configPatches"]
    assert patch["match"]["context"] == "GATEWAY"
    assert patch["match"]["cluster"] == {"service": fqdn, "portNumber": port}
    assert gw["metadata"]["name"] in vs["spec"]["gateways"]
    for route in vs["spec"]["http"]:
        for dest in route["route"]:
            assert dest["destination"] == {"host": fqdn, "port": {"number": port}}
    assert dr["spec"]["host"] == fqdn
    assert wp["spec"]["url"].startswith("oci://")
    assert wp["spec"].get("failStrategy") == "FAIL_CLOSE"
    assert all(m.get("mode") in ("CLIENT", "CLIENT_AND_SERVER") for m in wp["spec"].get("match", []))


def test_envoy_gateway_manifests_agree():
    svc, port = service_and_port()
    gw = one("Gateway", "gateway.networking.k8s.io")
    route = one("HTTPRoute")
    ns = route["metadata"]["namespace"]
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gw["metadata"]["name"]]
    assert gw["metadata"]["namespace"] == ns == svc["metadata"]["namespace"]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": svc["metadata"]["name"], "port": port}]
    for kind in ("EnvoyExtensionPolicy", "BackendTrafficPolicy"):
        policy = one(kind)
        assert policy["metadata"]["namespace"] == ns
        assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io",
                                                  "kind": "HTTPRoute",
                                                  "name": route["metadata"]["name"]}], kind
    epp = one("EnvoyPatchPolicy")
    assert epp["metadata"]["namespace"] == ns
    assert epp["spec"]["targetRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                        "name": gw["metadata"]["name"]}
    # Envoy Gateway's xDS name of the cluster of rule 0 of the route.
    (cluster_patch,) = epp["spec"]["jsonPatches"]
    assert cluster_patch["name"] == f"httproute/{ns}/{route['metadata']['name']}/rule/0"
    (wasm,) = one("EnvoyExtensionPolicy")["spec"]["wasm"]
    assert wasm.get("failOpen") is False
    # Both gateways load the same published image.
    assert wasm["code"]["type"] == "Image"
    assert "oci://" + wasm["code"]["image"]["url"] == one("WasmPlugin")["spec"]["url"]
    # The alternative patch sits a directory down, out of `kubectl apply -f deploy/envoy-gateway/`.
    top_level = [where for where, doc in MANIFESTS if doc["kind"] == "EnvoyPatchPolicy"
                 and Path(where.split("#")[0]).parent == Path("deploy/envoy-gateway")]
    assert not top_level, top_level


def manifest_stats_configs() -> dict[str, dict]:
    """The bootstrap fragment each gateway's manifest merges into its Envoy's bootstrap."""
    (istio,) = [d for d in of_kind("ConfigMap") if "custom_bootstrap.json" in d.get("data", {})]
    eg = one("EnvoyProxy")
    assert eg["spec"]["bootstrap"]["type"] == "Merge"
    return {"istio": json.loads(istio["data"]["custom_bootstrap.json"]),
            "envoy-gateway": yaml.safe_load(eg["spec"]["bootstrap"]["value"])}


def test_gateway_bootstraps_carry_envoy_yamls_stats_tags():
    """The per-endpoint metrics get their cluster and endpoint tags on both gateways: the same
    stats_tags as envoy/envoy.yaml (test_stats_tags.py runs each in a real Envoy), merged into
    the bootstrap of the pods tether runs in."""
    for label, fragment in manifest_stats_configs().items():
        assert fragment == {"stats_config": shipped()["stats_config"]}, label
    (istio,) = [d for d in of_kind("ConfigMap") if "custom_bootstrap.json" in d.get("data", {})]
    # sidecar.istio.io/bootstrapOverride names a ConfigMap in the pod's namespace: the gateway's.
    assert istio["metadata"]["namespace"] == one("WasmPlugin")["metadata"]["namespace"]
    gw = one("Gateway", "gateway.networking.k8s.io")
    eg = one("EnvoyProxy")
    assert gw["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": eg["metadata"]["name"]}
    assert eg["metadata"]["namespace"] == gw["metadata"]["namespace"]


def test_oci_dockerfile_packs_the_module_as_plugin_wasm():
    lines = [l.split() for l in (DEPLOY / "oci" / "Dockerfile").read_text().splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    assert lines[0] == ["FROM", "scratch"]
    assert ["COPY", harness.WASM.name, "./plugin.wasm"] in lines


# --------------------------------------------------------------------------------------------
# docker compose: Prometheus scraping Envoy


def test_compose_prometheus_scrapes_envoy_admin():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"envoy", "backend-1", "backend-2", "backend-3", "prometheus"} <= set(services)
    prom = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"]), prom["image"]
    assert prom["network_mode"] == "host"
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    args = dict(a.split("=", 1) for a in prom["command"])
    assert mounts[f"./{PROMETHEUS_YML.relative_to(REPO)}"] == args["--config.file"]
    assert args["--web.listen-address"] == "127.0.0.1:9090"

    admin = shipped()["admin"]["address"]["socket_address"]
    target = f"{admin['address']}:{admin['port_value']}"
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
    envoy_jobs = [j for j in scrape if j.get("metrics_path") == "/stats/prometheus"
                  and any(target in s.get("targets", []) for s in j.get("static_configs", []))]
    assert len(envoy_jobs) == 1, f"no job scraping {target}/stats/prometheus in {PROMETHEUS_YML}"


PROM_LINE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{[^{}]*\})? [-+0-9.eEInfNa]+$")


def test_envoy_with_manifest_config_is_sticky_and_serves_prometheus(make_stack):
    """The Istio manifests' plugin config and cluster policy in a real Envoy: a session stays on
    its endpoint, and /stats/prometheus (what Prometheus scrapes) counts the requests."""
    (label,) = [k for k in PLUGIN_CONFIGS if k.startswith("WasmPlugin/")]
    (cluster_label,) = [k for k in CLUSTERS if k.startswith("EnvoyFilter/")]
    stack = make_stack(plugin_config=as_module_json(PLUGIN_CONFIGS[label]),
                       mutate=with_cluster(CLUSTERS[cluster_label]))
    cfg = yaml.safe_load(stack.envoy.config_path.read_text())
    assert harness._cluster(cfg)["lb_policy"] == "LEAST_REQUEST"  # the manifest's cluster runs

    client = stack.client()
    served = []
    for _ in range(6):
        r = client.request("/")
        assert r.status == 200, r
        served.append(r.backend)
    assert len(set(served)) == 1, f"the session moved: {served}"
    assert PLUGIN_CONFIGS[label]["session_name"] in client.jar
    others = {stack.client().request("/").backend for _ in range(6)}
    assert len(others) > 1, f"new sessions were not load-balanced: {others}"

    def scraped():
        status, body = stack.envoy.admin("/stats/prometheus")
        assert status == 200
        m = re.search(r'^envoy_cluster_upstream_rq_total\{envoy_cluster_name="app"\} (\d+)$',
                      body, re.MULTILINE)
        # tether's own metrics (named tether_*), handed to Envoy about once a second.
        counted = re.search(r"^tether_[a-z_]+\{[^{}]*\} [1-9]", body, re.MULTILINE)
        return body if m and int(m.group(1)) >= 12 and counted else None

    body = wait_until(scraped, timeout=5.0,
                      what="/stats/prometheus counting 12 requests and tether's metrics")
    # Prometheus 3 refuses a scrape without a Content-Type it knows.
    conn = http.client.HTTPConnection(harness.HOST, stack.envoy.admin_port, timeout=2.0)
    try:
        conn.request("GET", "/stats/prometheus")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("content-type", "").startswith("text/plain"), resp.getheaders()
    finally:
        conn.close()
    samples = [l for l in body.splitlines() if l and not l.startswith("#")]
    bad = [l for l in samples if not PROM_LINE.match(l)]
    assert not bad, f"not Prometheus text format: {bad[:5]}"
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in body
