;; The cheapest sticky-session filter a proxy-wasm module can be: the floor of the session work,
;; next to bench/empty.wat (the floor of any wasm filter). The benchmark runs it as the variants
;; "wasm-sticky" (returning) and "wasm-sticky-new" (bench/run.py).
;;
;; It does what Envoy's own `stateful_session` cookie filter does, with the host calls a
;; proxy-wasm module needs for it, and nothing else:
;;   request:  read `Cookie`; when it is `s=<address>`, name that endpoint in `x-tether-host`
;;             (the override_host header of envoy/envoy.yaml);
;;   response: read `upstream.address`; when it is not the endpoint the cookie named, add
;;             `Set-Cookie: s=<address>`.
;; No token, no crypto, no expiry, no status check, no parsing: the cookie is the address in
;; clear (Envoy's filter base64-encodes it). It is a measuring stick, not a filter to use.
(module
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 16)
  (data (i32.const 16) "cookie")
  (data (i32.const 32) "x-tether-host")
  (data (i32.const 64) "upstream\00address")
  (data (i32.const 112) "set-cookie")
  (data (i32.const 2048) "s=")
  ;; 256/260: where Envoy writes a returned value's pointer and size. 2048: the Set-Cookie value
  ;; being built. 16384: one 128-byte slot per live stream ([length][address]), by context id.
  ;; 65536: the scratch Envoy copies every returned value into (each is used before the next).
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32) (i32.const 65536))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_delete") (param i32))
  (func $slot (param $ctx i32) (result i32)
    (i32.add (i32.const 16384) (i32.shl (i32.and (local.get $ctx) (i32.const 127)) (i32.const 7))))
  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))
  (func $equal (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $slot i32) (local $p i32) (local $len i32)
    (local.set $slot (call $slot (local.get $ctx)))
    (i32.store (local.get $slot) (i32.const 0))
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 256) (i32.const 260)))
      (then
        (local.set $p (i32.load (i32.const 256)))
        (local.set $len (i32.load (i32.const 260)))
        (if (i32.and (i32.gt_u (local.get $len) (i32.const 2)) (i32.le_u (local.get $len) (i32.const 120)))
          (then
            (local.set $len (i32.sub (local.get $len) (i32.const 2)))
            (call $copy (i32.add (local.get $slot) (i32.const 4)) (i32.add (local.get $p) (i32.const 2)) (local.get $len))
            (i32.store (local.get $slot) (local.get $len))
            (drop (call $replace_header (i32.const 0) (i32.const 32) (i32.const 13)
                                        (i32.add (local.get $slot) (i32.const 4)) (local.get $len)))))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param i32 i32) (result i32)
    (local $slot i32) (local $len i32)
    (local.set $slot (call $slot (local.get $ctx)))
    (if (call $get_property (i32.const 64) (i32.const 16) (i32.const 256) (i32.const 260))
      (then (return (i32.const 0))))
    (local.set $len (i32.load (i32.const 260)))
    (if (i32.gt_u (local.get $len) (i32.const 120)) (then (return (i32.const 0))))
    (call $copy (i32.const 2050) (i32.load (i32.const 256)) (local.get $len))
    (if (i32.eqz (i32.and (i32.eq (i32.load (local.get $slot)) (local.get $len))
                          (call $equal (i32.add (local.get $slot) (i32.const 4)) (i32.const 2050) (local.get $len))))
      (then (drop (call $add_header (i32.const 2) (i32.const 112) (i32.const 10)
                                    (i32.const 2048) (i32.add (local.get $len) (i32.const 2))))))
    (i32.const 0)))
