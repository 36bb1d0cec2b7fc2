//! `bench/sticky.wat` written in Rust with the proxy-wasm SDK (`proxy-wasm` 0.2.5, the SDK
//! tether must use): the benchmark's SDK floor, run as the variants "wasm-sticky-sdk"
//! (returning) and "wasm-sticky-sdk-new" (bench/run.py).
//!
//! It makes the host calls sticky.wat makes, with the same cookie, header and limits:
//!   request:  read `Cookie`; when it holds an endpoint, name it in `x-tether-host`;
//!   response: read `upstream.address`; when it is not the endpoint the cookie named, add
//!             `Set-Cookie: s=<address>`.
//! Written the cheapest way the SDK allows: one root context creating an HTTP context per
//! stream, the SDK's own `hostcalls` and byte getters, no allocation of its own, no logging.
//! What it costs above sticky.wat is what writing those calls with the SDK costs, which no
//! filter built on the SDK can avoid. It is a measuring stick, not a filter to use.

// The filter's decisions, apart from the host calls so the host's tests reach them (on the
// host the crate holds nothing else).
#[cfg(any(test, all(target_arch = "wasm32", target_os = "wasi")))]
mod session {
    /// sticky.wat's cookie: `s=<address>`, the address in clear.
    pub(crate) const COOKIE_PREFIX: &[u8] = b"s=";
    /// sticky.wat's bound on a `Cookie` value and on an address: its per-stream slot's size.
    pub(crate) const MAX_LEN: usize = 120;

    /// The endpoint a request's `Cookie` value names, empty for none. Like sticky.wat, the first
    /// two bytes are taken to be `s=` without a look: the bench sends no other cookie, and a check
    /// sticky.wat does not make would be cost that this floor's yardstick does not pay.
    pub(crate) fn pinned(cookie: &[u8]) -> &[u8] {
        if cookie.len() > COOKIE_PREFIX.len() && cookie.len() <= MAX_LEN {
            cookie.get(COOKIE_PREFIX.len()..).unwrap_or_default()
        } else {
            &[]
        }
    }

    /// The `Set-Cookie` value for a response from `upstream`, built in `buf` (on the stack, as
    /// sticky.wat builds it in place), or none when the cookie already named that endpoint.
    pub(crate) fn set_cookie<'a>(
        pinned: &[u8],
        upstream: &[u8],
        buf: &'a mut [u8; COOKIE_PREFIX.len() + MAX_LEN],
    ) -> Option<&'a [u8]> {
        if upstream.len() > MAX_LEN || upstream == pinned {
            return None;
        }
        let (head, tail) = buf.split_at_mut(COOKIE_PREFIX.len());
        head.copy_from_slice(COOKIE_PREFIX);
        tail.get_mut(..upstream.len())?.copy_from_slice(upstream);
        buf.get(..COOKIE_PREFIX.len() + upstream.len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const UPSTREAM: &[u8] = b"127.0.0.1:8081";

        fn answer(cookie: &[u8]) -> Option<Vec<u8>> {
            let mut buf = [0u8; COOKIE_PREFIX.len() + MAX_LEN];
            set_cookie(pinned(cookie), UPSTREAM, &mut buf).map(<[u8]>::to_vec)
        }

        #[test]
        fn a_new_session_gets_the_endpoint_it_reached() {
            assert_eq!(pinned(b""), b"");
            assert_eq!(answer(b""), Some(b"s=127.0.0.1:8081".to_vec()));
        }

        #[test]
        fn a_returning_session_is_pinned_and_gets_no_cookie() {
            assert_eq!(pinned(b"s=127.0.0.1:8081"), UPSTREAM);
            assert_eq!(answer(b"s=127.0.0.1:8081"), None);
        }

        #[test]
        fn a_session_whose_endpoint_changed_gets_the_new_one() {
            assert_eq!(
                answer(b"s=127.0.0.1:9999"),
                Some(b"s=127.0.0.1:8081".to_vec())
            );
        }

        #[test]
        fn values_past_sticky_wat_s_slot_are_no_session() {
            let long = [b'1'; MAX_LEN + 1];
            assert_eq!(pinned(&long), b"");
            assert_eq!(pinned(b"s="), b"");
            let mut buf = [0u8; COOKIE_PREFIX.len() + MAX_LEN];
            assert_eq!(set_cookie(b"", &long, &mut buf), None);
            let longest = [b'1'; MAX_LEN];
            assert_eq!(
                set_cookie(b"", &longest, &mut buf).map(<[u8]>::len),
                Some(MAX_LEN + 2)
            );
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod filter {
    use crate::session::{pinned, set_cookie, COOKIE_PREFIX, MAX_LEN};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, MapType};

    // The SDK's entry-point macro runs the WASI constructors in an unsafe block.
    #[allow(unsafe_code)]
    mod entry {
        use super::{Root, RootContext};
        proxy_wasm::main! {{
            proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
        }}
    }

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Sticky { cookie: Vec::new() }))
        }
    }

    /// One stream. The SDK hands every value over in a `Vec` of its own; the request's
    /// `Cookie` is kept in it as it came, and the endpoint read from it in place.
    struct Sticky {
        cookie: Vec<u8>,
    }

    impl Context for Sticky {}

    // Host-call failures are let go, as sticky.wat lets them go: the request goes on unpinned.
    impl HttpContext for Sticky {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.cookie = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "cookie")
                .ok()
                .flatten()
                .unwrap_or_default();
            let endpoint = pinned(&self.cookie);
            if !endpoint.is_empty() {
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "x-tether-host",
                    Some(endpoint),
                );
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            // The SDK takes a property's path as a Vec and serializes it into another one: two
            // allocations per response that sticky.wat does not make, and no way around them.
            let Ok(Some(upstream)) = hostcalls::get_property(vec!["upstream", "address"]) else {
                return Action::Continue;
            };
            let mut buf = [0u8; COOKIE_PREFIX.len() + MAX_LEN];
            if let Some(value) = set_cookie(pinned(&self.cookie), &upstream, &mut buf) {
                let _ = hostcalls::add_map_value_bytes(
                    MapType::HttpResponseHeaders,
                    "set-cookie",
                    value,
                );
            }
            Action::Continue
        }
    }
}
