"""`tether check-envoy` reads a bootstrap as Envoy reads it: the shipped envoy/envoy.yaml and
envoy/native.yaml spelled with protobuf's JSON names (`typedConfig`), their filters carried in
`xds.type.v3.TypedStruct` (as Istio writes them), are loaded by the real Envoy
(`envoy --mode validate`, the module included) and pass the command as the shipped files do; the
same spelling with a mistake is still reported."""
from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest

import harness

CLI = harness.REPO / "target" / "release" / "tether"
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
# Keys that are the user's own names, not fields: kept as written under these.
VERBATIM = {"filter_metadata"}
NAME_KEYED = {"typed_per_filter_config", "typed_extension_protocol_options"}


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def json_names(v):
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k in VERBATIM:
                out[camel(k)] = copy.deepcopy(x)
            elif k in NAME_KEYED:
                out[camel(k)] = {name: json_names(c) for name, c in x.items()}
            else:
                out[camel(k)] = json_names(x)
        return out
    if isinstance(v, list):
        return [json_names(x) for x in v]
    return v


def in_typed_struct(typed: dict) -> dict:
    fields = dict(typed)
    url = fields.pop("@type")
    return {"@type": TYPED_STRUCT, "type_url": url, "value": fields}


def spelled(cfg: dict) -> dict:
    """The bootstrap with its connection manager and tether's filter in TypedStructs, all in JSON
    names."""
    cfg = copy.deepcopy(cfg)
    chain = cfg["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    tether = [f for f in hcm["http_filters"] if f.get("name") == harness.FILTER]
    assert len(tether) == 1
    tether[0]["typed_config"] = in_typed_struct(tether[0]["typed_config"])
    chain["filters"][0]["typed_config"] = in_typed_struct(hcm)
    return json_names(cfg)


def native_yaml() -> dict:
    cfg = harness.yaml_load(harness.REPO / "envoy" / "native.yaml")
    cfg["admin"]["address"]["socket_address"].update(address=harness.HOST,
                                                     port_value=harness.free_port())
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"].update(
        address=harness.HOST, port_value=harness.free_port())
    return cfg


def validate(cfg: dict, path: Path) -> tuple[int, str]:
    harness.write_config(cfg, path)
    env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(harness.NATIVE_DIR))
    proc = subprocess.run(
        [harness.envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart",
         "--base-id", str(harness.unique_base_id()), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        timeout=90, cwd=str(path.parent), env=env)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def check_envoy(path: Path) -> tuple[int, str]:
    proc = subprocess.run([str(CLI), "check-envoy", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=30)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


@pytest.fixture(scope="module", autouse=True)
def built():
    for part in (CLI, harness.WASM, harness.NATIVE_SO):
        if not part.exists():
            pytest.fail(f"{part} does not exist: run `make build build-native`")


@pytest.mark.parametrize("build", ["wasm", "native"])
def test_the_shipped_config_in_json_names_and_typed_structs(build, tmp_path):
    shipped = harness.build_config() if build == "wasm" else native_yaml()
    plain_path = harness.write_config(shipped, tmp_path / "plain.yaml")
    rc, plain = check_envoy(plain_path)
    assert rc == 0, plain
    twin = spelled(shipped)
    assert "typedConfig" in str(twin) and "typed_config" not in str(twin)
    rc, out = validate(twin, tmp_path / "spelled.yaml")
    assert rc == 0, f"Envoy refuses the twin:\n{out[-3000:]}"
    if build == "native":
        assert "Dynamic module ABI version v0.2.0 matched." in out, out[-3000:]
    rc, checked = check_envoy(tmp_path / "spelled.yaml")
    assert rc == 0, checked
    ok = [line.split(": ok: ", 1)[1] for line in (plain, checked)]
    assert ok[0] == ok[1], (plain, checked)

    # The same spelling without the route's retry policy: Envoy loads it, the command says so.
    broken = copy.deepcopy(shipped)
    hcm = broken["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for vhost in hcm["typed_config"]["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            route.get("route", {}).pop("retry_policy", None)
        vhost.pop("retry_policy", None)
    path = tmp_path / "broken.yaml"
    harness.write_config(spelled(broken), path)
    rc, out = check_envoy(path)
    assert rc == 1, out
    assert "route: no retry policy" in out, out
