"""`keys_secret` (native build): the keys come from one of Envoy's generic secrets.

With a secret in the bootstrap (`static_resources.secrets`), tokens are sealed with its first
key: `tether open --keys <that key>` opens them, another key does not, and a second Envoy with
the same secret pins the first one's sessions. With the secret served by SDS from a file
(`path_config_source`), the file is rotated while Envoy runs, with no reload: `K1` becomes
`K2,K1` (old sessions stay pinned, new tokens are sealed with K2), then `K2` (tokens sealed only
with K1 are no session). A secret Envoy does not have is refused naming the field; the Wasm
build refuses the field, since proxy-wasm gives a module no access to Envoy's secrets.
"""
from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import harness
from harness import Client, Envoy
from test_native import (LOG_ARGS, NATIVE_DIR, NATIVE_SO, native_config, native_stack, refusal,
                         validate_native)

CLI = harness.REPO / "target" / "release" / "tether"
SECRET = "tether-keys"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module", autouse=True)
def search_path():
    for part in (NATIVE_SO, CLI):
        if not part.exists():
            pytest.fail(f"{part} does not exist: run `make build build-native`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", str(NATIVE_DIR))
        yield


def opens(token: str, key: str) -> bool:
    proc = subprocess.run([str(CLI), "open", "--keys", key, f"tether={token}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=30)
    return proc.returncode == 0


def static_config(ports: list[int], key: str) -> dict:
    cfg = native_config(harness.free_port(), harness.free_port(), ports, {"keys_secret": SECRET})
    cfg["static_resources"]["secrets"] = [
        {"name": SECRET, "generic_secret": {"secret": {"inline_string": key}}}]
    return cfg


def write_sds(path: Path, keys: list[str]):
    """The SDS file, replaced whole (Envoy watches it and reads a moved-in file)."""
    doc = {"resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": SECRET, "generic_secret": {"secret": {"inline_string": ",".join(keys)}}}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


@contextlib.contextmanager
def running(workdir: Path, make_config):
    """Three backends and one Envoy with the config `make_config(ports)` gives; all stopped."""
    with native_stack(workdir, make_config=make_config) as (envoy, _):
        yield envoy


@contextlib.contextmanager
def beside(first: Envoy, workdir: Path, key: str):
    """Another Envoy in front of `first`'s backends, its static secret holding `key`."""
    workdir.mkdir(parents=True)
    envoy = Envoy(workdir, first.backend_ports, log_args=LOG_ARGS,
                  config=static_config(first.backend_ports, key))
    harness.ACTIVE_ENVOYS.append(envoy)
    try:
        envoy.start()
        yield envoy
        assert envoy.bad_log_lines() == []
    finally:
        envoy.stop()
        harness.ACTIVE_ENVOYS.remove(envoy)


def new_session(port: int) -> tuple[str, str]:
    """(token, backend) of a fresh client's first request."""
    client = Client(port, fresh=True)
    try:
        r = client.request("/", cookie=None)
        cookie = r.set_cookie(harness.COOKIE)
        assert cookie is not None, r.headers
        return cookie.value, r.backend
    finally:
        client.close()


def served(port: int, token: str) -> tuple[str, bool]:
    """(backend, whether tether issued a new token) for one request carrying `token`."""
    client = Client(port, fresh=True)
    try:
        r = client.request("/", cookie=f"{harness.COOKIE}={token}")
        return r.backend, r.set_cookie(harness.COOKIE) is not None
    finally:
        client.close()


def test_a_static_secret_seals_and_every_envoy_with_it_opens(tmp_path):
    key, other = new_key(), new_key()
    with running(tmp_path / "a", lambda ports: static_config(ports, key)) as a:
        token, backend = new_session(a.port)
        assert opens(token, key)
        assert not opens(token, other)
        for _ in range(5):
            assert served(a.port, token) == (backend, False)
        # A second Envoy with the same secret, in front of the same backends: the session
        # reaches its endpoint there too, with no new token.
        with beside(a, tmp_path / "b", key) as b:
            for _ in range(5):
                assert served(b.port, token) == (backend, False)
        # And an Envoy whose secret holds another key treats it as no session.
        with beside(a, tmp_path / "c", other) as c:
            assert served(c.port, token)[1], "a token sealed with another key opened"


def test_a_secret_rotated_by_sds_reaches_the_sessions_without_a_reload(tmp_path):
    k1, k2 = new_key(), new_key()
    sds = tmp_path / "sds.yaml"
    write_sds(sds, [k1])

    def config(ports):
        cfg = native_config(harness.free_port(), harness.free_port(), ports, {"keys_secret": {
            "name": SECRET, "path": str(sds)}})
        cfg["node"] = {"id": "tether-test", "cluster": "tether-test"}
        return cfg

    with running(tmp_path / "envoy", config) as envoy:
        old, old_backend = new_session(envoy.port)
        assert opens(old, k1)

        write_sds(sds, [k2, k1])
        deadline = time.monotonic() + 15
        while True:
            token, _ = new_session(envoy.port)
            if opens(token, k2):
                break
            assert time.monotonic() < deadline, "new tokens still sealed with K1"
            time.sleep(0.2)
        assert not opens(token, k1)
        # Every worker has the new keys by now or soon: K1 still opens, the session stays.
        for _ in range(8):
            assert served(envoy.port, old) == (old_backend, False)

        write_sds(sds, [k2])
        deadline = time.monotonic() + 15
        while not served(envoy.port, old)[1]:
            assert time.monotonic() < deadline, "a token sealed only with K1 still opens"
            time.sleep(0.2)
        assert served(envoy.port, token)[1] is False, "a K2 token must still open"


def test_a_secret_envoy_does_not_have_is_refused_naming_the_field(tmp_path):
    line = refusal(*validate_native({"routes": {"app": {"keys_secret": "absent"}}}, tmp_path))
    assert 'routes.app.keys_secret: Envoy has no generic secret "absent"' in line, line


def test_the_wasm_build_refuses_keys_secret_naming_the_field(tmp_path):
    line = refusal(*harness.validate_plugin_config({"keys_secret": SECRET}, tmp_path))
    assert "keys_secret: Envoy's secrets reach only the native build" in line, line


def test_keys_that_reach_an_sds_secret_late_are_taken_up_when_they_do(tmp_path):
    """While the secret Envoy has holds no keys (served empty, as before its first value),
    streams go on without tether (load-balanced, no token, one warning); the first keys
    delivered seal the next new session, with no reload."""
    key = new_key()
    sds = tmp_path / "sds.yaml"
    write_sds(sds, [])  # the secret exists with no keys yet: no usable value

    def config(ports):
        cfg = native_config(harness.free_port(), harness.free_port(), ports,
                            {"keys_secret": {"name": SECRET, "path": str(sds)}})
        cfg["node"] = {"id": "tether-test", "cluster": "tether-test"}
        return cfg

    with running(tmp_path / "envoy", config) as envoy:
        client = Client(envoy.port, fresh=True)
        try:
            for _ in range(3):
                r = client.request("/", cookie=None)
                assert r.status == 200 and r.set_cookie(harness.COOKIE) is None, r.headers
        finally:
            client.close()
        write_sds(sds, [key])
        deadline = time.monotonic() + 15
        while True:
            client = Client(envoy.port, fresh=True)
            try:
                cookie = client.request("/", cookie=None).set_cookie(harness.COOKIE)
            finally:
                client.close()
            if cookie is not None:
                break
            assert time.monotonic() < deadline, "the delivered secret was not taken up"
            time.sleep(0.2)
        assert opens(cookie.value, key)
        warnings = [l for l in envoy.log().splitlines()
                    if "streams go on without tether until it has" in l]
        assert len(warnings) == 1, warnings
