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

.PHONY: all setup target build run test unit lint validate e2e bench clean

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

build: target $(WASM_OPT)
	cargo build --release --target $(TARGET)
	$(WASM_OPT) -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	  --enable-mutable-globals $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM)
	@echo "module: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

lint: target
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) --lib -- -D warnings

unit:
	cargo test

# Every shipped Envoy config must load, with the module, through the real Envoy.
validate: build setup
	@for f in $(ENVOY_CONFIGS); do \
	  echo "validate $$f"; \
	  $(ENVOY) --mode validate -c $$f --log-level error >/dev/null || exit 1; \
	done

e2e: build setup
	$(VPY) -m pytest -q tests/e2e

test: lint unit validate e2e

# Benchmark (not part of `make test`): tether's cost next to Envoy's stateful_session, the binding
# table at scale, module size and load time. `make bench BENCH_ARGS=--quick` for a smoke run.
bench: build setup
	@command -v wrk >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y wrk; }
	$(VPY) bench/run.py $(BENCH_ARGS)

run: build setup
	@trap 'kill 0' EXIT INT TERM; \
	for i in 1 2 3; do $(PYTHON) envoy/backend.py --port 808$$i --name backend-$$i & done; \
	echo; \
	echo "tether demo: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901), backends 127.0.0.1:8081-8083"; \
	echo "Try it (a cookie jar keeps the session; every answer names the same backend):"; \
	echo "  for i in 1 2 3 4 5; do curl -s -b /tmp/tether.jar -c /tmp/tether.jar http://127.0.0.1:10000/ -o /dev/null -w '%{header_json}\n' | grep -o 'backend-[0-9]'; done"; \
	echo "Without the jar every request is a new session and round robin spreads them:"; \
	echo "  for i in 1 2 3; do curl -s http://127.0.0.1:10000/ -D - -o /dev/null | grep -iE 'x-backend|set-cookie'; done"; \
	echo "Ctrl-C stops everything."; \
	echo; \
	$(ENVOY) -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart --log-level warn --component-log-level wasm:info

clean:
	cargo clean
	rm -rf $(VENV) .tools
