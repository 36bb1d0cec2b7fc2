"""Fixtures for tether's end-to-end tests: real backends and a real Envoy on loopback ports."""
from __future__ import annotations

import pytest

import harness
from harness import SHIPPED, Stack




# Modules about one artifact, or none, run in the Wasm pass only (test_native.py, which starts
# envoy/native.yaml itself, runs there too).
BUILD_INDEPENDENT = {"test_manifests.py", "test_shipped_files.py", "test_mcp_programs.py",
                     "test_check_envoy.py", "test_native_secrets.py"}
WASM_ONLY = {"test_module_exports.py", "test_demo.py", "test_stats_tags.py"}


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if harness.BUILD == "native":
        return name in BUILD_INDEPENDENT or name in WASM_ONLY or None
    return None


class StackFactory:
    """Creates stacks in a pytest tmp dir and closes every one of them, always."""

    def __init__(self, tmp_path_factory, label: str):
        self.tmp_path_factory = tmp_path_factory
        self.label = label
        self.stacks: list[Stack] = []

    def __call__(self, plugin_config=SHIPPED, n_backends: int = 3, concurrency: int = 2,
                 mutate=None) -> Stack:
        if not harness.MODULE.exists():
            pytest.fail(f"module {harness.MODULE} does not exist: run `make build` "
                        "(`make build-native` for TETHER_BUILD=native)")
        workdir = self.tmp_path_factory.mktemp(self.label)
        stack = Stack(workdir, n_backends=n_backends, plugin_config=plugin_config,
                      concurrency=concurrency, mutate=mutate)
        self.stacks.append(stack)
        return stack.start()

    def close(self):
        errors = []
        for stack in reversed(self.stacks):
            try:
                stack.close(check=True)
            except AssertionError as exc:
                errors.append(str(exc))
        self.stacks.clear()
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def module_stacks(request, tmp_path_factory):
    """Factory for stacks that live for the whole module (closed, and checked, at its end)."""
    factory = StackFactory(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1])
    yield factory
    factory.close()


@pytest.fixture
def make_stack(request, tmp_path_factory):
    """Factory for stacks that live for one test."""
    factory = StackFactory(tmp_path_factory, request.node.name[:40])
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def env(module_stacks) -> Stack:
    """3 backends and Envoy with the shipped envoy/envoy.yaml and its plugin config."""
    return module_stacks()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for envoy in list(harness.ACTIVE_ENVOYS):
            if envoy.log_paths:
                try:
                    tail = envoy.log_tail(60)
                except Exception as exc:  # noqa: BLE001
                    tail = f"(could not read log: {exc!r})"
                state = "alive" if envoy.alive() else "NOT RUNNING"
                report.sections.append(
                    (f"envoy log tail ({envoy.log_path}, {state})", tail))


def pytest_terminal_summary(terminalreporter):
    if harness.UNHEALTHY_STARTS:
        terminalreporter.write_line(
            f"harness: {len(harness.UNHEALTHY_STARTS)} Envoy start(s) had endpoints failing their "
            f"first health check (active_hc_timeout) and were started over; first: "
            f"{harness.UNHEALTHY_STARTS[0]}")
