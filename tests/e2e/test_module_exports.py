"""The callbacks `make build` removes from the module's exports (Makefile UNUSED_EXPORTS, so Envoy
skips calling into the VM for nothing) are exactly those tether does not implement: a callback
implemented later cannot be silently disabled, and one the SDK adds must be decided on."""
import re
from pathlib import Path

import harness

RAW = harness.REPO / "target" / "wasm32-wasip1" / "release" / "deps" / "tether.wasm"
FILTER_RS = harness.REPO / "src" / "filter.rs"

# Each SDK export and the trait methods that make it do something.
CALLBACKS = {
    "proxy_on_configure": ["on_configure"],
    "proxy_on_tick": ["on_tick"],
    "proxy_on_done": ["on_done"],
    "proxy_on_log": ["on_log"],
    "proxy_on_queue_ready": ["on_queue_ready"],
    "proxy_on_new_connection": ["on_new_connection"],
    "proxy_on_downstream_data": ["on_downstream_data"],
    "proxy_on_downstream_connection_close": ["on_downstream_close"],
    "proxy_on_upstream_data": ["on_upstream_data"],
    "proxy_on_upstream_connection_close": ["on_upstream_close"],
    "proxy_on_request_headers": ["on_http_request_headers"],
    "proxy_on_request_body": ["on_http_request_body"],
    "proxy_on_request_trailers": ["on_http_request_trailers"],
    "proxy_on_response_headers": ["on_http_response_headers"],
    "proxy_on_response_body": ["on_http_response_body"],
    "proxy_on_response_trailers": ["on_http_response_trailers"],
    "proxy_on_http_call_response": ["on_http_call_response"],
    "proxy_on_grpc_receive_initial_metadata": ["on_grpc_stream_initial_metadata"],
    "proxy_on_grpc_receive": ["on_grpc_call_response", "on_grpc_stream_message"],
    "proxy_on_grpc_receive_trailing_metadata": ["on_grpc_stream_trailing_metadata"],
    "proxy_on_grpc_close": ["on_grpc_stream_close"],
    "proxy_on_foreign_function": ["on_foreign_function"],
}
# The SDK's own plumbing: contexts are created and freed, and the host hands data over, through
# these whatever tether does.
ALWAYS = {"proxy_on_context_create", "proxy_on_delete", "proxy_on_vm_start",
          "proxy_on_memory_allocate"}


def leb128(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def exports(path: Path) -> set[str]:
    """The names in a WebAssembly module's export section."""
    data = path.read_bytes()
    assert data[:4] == b"\0asm", path
    at = 8
    while at < len(data):
        section, at = data[at], at + 1
        size, at = leb128(data, at)
        end = at + size
        if section == 7:
            count, at = leb128(data, at)
            names = set()
            for _ in range(count):
                n, at = leb128(data, at)
                names.add(data[at:at + n].decode())
                at += n + 1  # the kind byte
                _, at = leb128(data, at)
            return names
        at = end
    return set()


def test_removed_exports_are_exactly_the_callbacks_tether_does_not_implement():
    assert RAW.exists() and harness.WASM.exists(), "run `make build` first"
    sdk = {e for e in exports(RAW) if e.startswith("proxy_on_")}
    kept = {e for e in exports(harness.WASM) if e.startswith("proxy_on_")}
    unknown = sdk - set(CALLBACKS) - ALWAYS
    assert not unknown, f"the SDK exports callbacks this test does not know: {unknown}"
    implemented = set(re.findall(r"\bfn (on_\w+)\(", FILTER_RS.read_text()))
    assert {"on_http_request_headers", "on_http_response_headers"} <= implemented
    wrong = []
    for export in sorted(sdk):
        wanted = export in ALWAYS or any(m in implemented for m in CALLBACKS.get(export, []))
        if wanted != (export in kept):
            wrong.append(f"{export}: {'kept' if export in kept else 'removed'} but "
                         f"{'implemented' if wanted else 'not implemented'}")
    assert wrong == [], "\n".join(wrong)
    assert ALWAYS <= kept
