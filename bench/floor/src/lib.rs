//! The cheapest sticky filter a dynamic module built on `tether-abi` can be: the floor of the
//! session work for tether's native build, as `bench/sticky.wat` is for the Wasm build. The
//! benchmark runs it as the variants "native-floor" (returning) and "native-floor-new".
//!
//! It does what Envoy's own `stateful_session` cookie filter does, with the ABI calls that
//! takes, and nothing else:
//!   request:  read `Cookie`; when it is `s=<address>`, hand that endpoint to Envoy with the
//!             upstream-override-host call;
//!   response: read the upstream address; when it is not the endpoint the cookie named, add
//!             `Set-Cookie: s=<address>`.
//! No token, no crypto, no expiry, no status check, no metrics: the cookie is the address in
//! clear. With `filter_config` "strip" it also does the one more thing tether's cookie sessions
//! do to every returning request: it takes its cookie out of `Cookie` before the request goes
//! upstream (the variant "native-floor-strip"). It is a measuring stick, not a filter to use. It goes through the same hooks (each
//! catching panics) and the same safe calls as tether, so what tether costs above it is
//! tether's own work.

use tether_abi::{Attribute, ConfigHandle, EnvoyFilter, Filter, FilterConfig, HeaderMap, Status};

// Exporting Envoy's entry point is an unsafe attribute (`#[no_mangle]`).
#[allow(unsafe_code)]
mod entry {
    tether_abi::declare_module!(crate::new_config);
}

const COOKIE: &[u8] = b"s=";
/// Longer than any `IP:port` Envoy names; a longer cookie is not one this filter set.
const MAX_ADDRESS: usize = 64;

fn new_config(
    _handle: &mut ConfigHandle<'_>,
    _name: &[u8],
    config: &[u8],
) -> Option<Box<dyn FilterConfig>> {
    Some(Box::new(FloorConfig {
        strip: config == b"strip",
    }))
}

struct FloorConfig {
    /// Take the cookie out of the request (as tether does).
    strip: bool,
}

impl FilterConfig for FloorConfig {
    fn new_filter(&self, _envoy: &mut EnvoyFilter<'_>) -> Option<Box<dyn Filter>> {
        Some(Box::new(Floor {
            pinned: [0; MAX_ADDRESS],
            pinned_len: 0,
            strip: self.strip,
        }))
    }
}

/// The endpoint the request's cookie named, kept in place (no allocation per stream).
struct Floor {
    pinned: [u8; MAX_ADDRESS],
    pinned_len: usize,
    strip: bool,
}

impl Floor {
    fn pinned(&self) -> &[u8] {
        self.pinned.get(..self.pinned_len).unwrap_or_default()
    }
}

impl Filter for Floor {
    fn on_request_headers(&mut self, envoy: &mut EnvoyFilter<'_>, _end_of_stream: bool) -> Status {
        let len = match envoy
            .header(HeaderMap::Request, "cookie")
            .and_then(|c| c.strip_prefix(COOKIE))
            .filter(|a| !a.is_empty())
        {
            Some(address) => match self.pinned.get_mut(..address.len()) {
                Some(slot) => {
                    slot.copy_from_slice(address);
                    address.len()
                }
                None => 0,
            },
            None => 0,
        };
        self.pinned_len = len;
        if self.strip && len > 0 {
            // The cookie was the whole header (the bench sends no other): the header goes.
            envoy.remove_header(HeaderMap::Request, "cookie");
        }
        if let Ok(address) = std::str::from_utf8(self.pinned()) {
            if !address.is_empty() {
                envoy.set_upstream_override_host(address, false);
            }
        }
        Status::Continue
    }

    fn on_response_headers(&mut self, envoy: &mut EnvoyFilter<'_>, _end_of_stream: bool) -> Status {
        let mut cookie = [0u8; MAX_ADDRESS + 2];
        let len = match envoy.attribute(Attribute::UpstreamAddress) {
            Some(upstream) if upstream != self.pinned() && upstream.len() <= MAX_ADDRESS => {
                let (head, tail) = cookie.split_at_mut(COOKIE.len());
                head.copy_from_slice(COOKIE);
                match tail.get_mut(..upstream.len()) {
                    Some(tail) => {
                        tail.copy_from_slice(upstream);
                        COOKIE.len() + upstream.len()
                    }
                    None => 0,
                }
            }
            _ => 0,
        };
        if let Some(value) = cookie.get(..len).filter(|v| !v.is_empty()) {
            envoy.add_header(HeaderMap::Response, "set-cookie", value);
        }
        Status::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_abi::fake_host::{self, with_host};
    use tether_abi::sys::attribute_id;

    fn stream(cookie: Option<&str>) -> Option<Vec<u8>> {
        fake_host::reset();
        with_host(|h| {
            if let Some(c) = cookie {
                h.request = vec![(b"cookie".to_vec(), c.as_bytes().to_vec())];
            }
            h.response = vec![(b":status".to_vec(), b"200".to_vec())];
            h.attributes = vec![(attribute_id::UPSTREAM_ADDRESS, b"127.0.0.1:8081".to_vec())];
        });
        let mut filter = FloorConfig { strip: false }
            .new_filter(&mut fake_host::filter())
            .unwrap();
        let mut envoy = fake_host::filter();
        assert_eq!(
            filter.on_request_headers(&mut envoy, true),
            Status::Continue
        );
        assert_eq!(
            filter.on_response_headers(&mut envoy, true),
            Status::Continue
        );
        with_host(|h| {
            h.response
                .iter()
                .find(|(k, _)| k == b"set-cookie")
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn a_new_session_gets_the_endpoint_it_reached() {
        assert_eq!(stream(None), Some(b"s=127.0.0.1:8081".to_vec()));
        assert_eq!(with_host(|h| h.override_host.clone()), None);
    }

    #[test]
    fn a_returning_session_is_pinned_and_gets_no_cookie() {
        assert_eq!(stream(Some("s=127.0.0.1:8081")), None);
        assert_eq!(
            with_host(|h| h.override_host.clone()),
            Some(("127.0.0.1:8081".to_string(), false))
        );
    }

    #[test]
    fn strip_takes_the_cookie_out_of_the_request() {
        fake_host::reset();
        with_host(|h| h.request = vec![(b"cookie".to_vec(), b"s=127.0.0.1:8081".to_vec())]);
        let mut filter = FloorConfig { strip: true }
            .new_filter(&mut fake_host::filter())
            .unwrap();
        filter.on_request_headers(&mut fake_host::filter(), true);
        with_host(|h| {
            assert!(h.request.iter().all(|(k, _)| k != b"cookie"));
            assert_eq!(h.override_host, Some(("127.0.0.1:8081".to_string(), false)));
        });
    }

    #[test]
    fn a_session_whose_endpoint_changed_gets_the_new_one() {
        assert_eq!(
            stream(Some("s=127.0.0.1:9999")),
            Some(b"s=127.0.0.1:8081".to_vec())
        );
    }
}
