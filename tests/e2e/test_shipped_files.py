"""The files a user copies (docker-compose.yml, envoy/*.yaml) refer to what the repo ships."""
import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = "target/wasm32-wasip1/release/tether.wasm"


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_mounts_only_files_that_exist():
    services = compose()["services"]
    assert {"envoy", "backend-1", "backend-2", "backend-3"} <= set(services)
    mounted = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source.startswith("./"), f"{name}: {volume} is not a repo path"
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            mounted[target] = source
    # Envoy reads the very file the tests load, and finds the module where envoy.yaml says.
    command = services["envoy"]["command"]
    config = command[command.index("-c") + 1]
    assert mounted.get(str(pathlib.PurePosixPath(config).parent)) == "./envoy"
    envoy_yaml = (ROOT / "envoy/envoy.yaml").read_text()
    assert f"filename: {MODULE}" in envoy_yaml
    workdir = services["envoy"]["working_dir"]
    assert mounted.get(f"{workdir}/{MODULE}") == f"./{MODULE}"
    assert services["envoy"]["image"].endswith(":v1.40.0")


def test_compose_backends_match_envoy_endpoints():
    services = compose()["services"]
    ports = sorted(int(s["command"][s["command"].index("--port") + 1])
                   for n, s in services.items() if n.startswith("backend-"))
    config = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "app")
    endpoints = sorted(e["endpoint"]["address"]["socket_address"]["port_value"]
                       for group in cluster["load_assignment"]["endpoints"]
                       for e in group["lb_endpoints"])
    assert ports == endpoints


def test_makefile_run_uses_the_shipped_config():
    out = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "envoy/demo.py" in out.stdout
    # The demo on its default ports runs the shipped file itself, not a copy.
    sys.path.insert(0, str(ROOT / "envoy"))
    import demo

    assert demo.config_for(*demo.DEFAULT_PORTS[:2], demo.DEFAULT_PORTS[2]) == ROOT / "envoy" / "envoy.yaml"
    assert "backend.py" in (ROOT / "envoy" / "demo.py").read_text()


def test_every_shipped_cluster_closes_idle_backend_connections_before_common_backends_do():
    # uvicorn, Node's http server and Apache close a keep-alive connection idle for 5 s; the
    # cluster closes it first, so no request goes out on a connection its backend is closing
    # (tests/e2e/test_mcp.py sees Envoy do it).
    seen = []
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        for cluster in yaml.safe_load(path.read_text())["static_resources"]["clusters"]:
            options = cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            idle = options.get("common_http_protocol_options", {}).get("idle_timeout", "")
            assert idle.endswith("s") and 0 < float(idle[:-1]) < 5, f"{path.name} {cluster['name']}: {idle!r}"
            seen.append(f"{path.name}:{cluster['name']}")
    assert len(seen) >= 7, seen
