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
//!
//! Built with `--features sealed` (variants "wasm-sticky-sealed" and "wasm-sticky-sealed-new"),
//! the cookie is an authenticated token instead of the address in clear: the address sealed with
//! XChaCha20-Poly1305 (tether's AEAD, crate and optimisation level), a fresh nonce from a ChaCha20
//! keystream seeded once from WASI, base64url. Sealed in place on the stack, no allocation, and
//! nothing else in it (no times, no cluster, a fixed key): the floor of any filter on the SDK whose
//! cookie cannot be read or forged, which the mission asks of tether's tokens.

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

    /// The sealed variant's token: `nonce | ciphertext | tag`, base64url without padding.
    #[cfg(feature = "sealed")]
    pub(crate) mod token {
        use super::MAX_LEN;
        use chacha20::cipher::{KeyIvInit, StreamCipher};
        use chacha20::ChaCha20;
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

        const NONCE_LEN: usize = 24;
        const TAG_LEN: usize = 16;
        /// The longest sealed address, in bytes and in base64url text.
        const RAW_MAX: usize = NONCE_LEN + MAX_LEN + TAG_LEN;
        pub(crate) const TEXT_MAX: usize = (RAW_MAX * 4).div_ceil(3);
        /// Bound into every token, as tether binds its carrier.
        const AAD: &[u8] = b"cookie";
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

        /// One per worker: the cipher under the floor's fixed key, and the nonces' keystream.
        pub(crate) struct Sealer {
            aead: XChaCha20Poly1305,
            nonces: Option<ChaCha20>,
        }

        impl Sealer {
            pub(crate) fn new(key: &[u8; 32]) -> Sealer {
                Sealer {
                    aead: XChaCha20Poly1305::new(key.into()),
                    nonces: None,
                }
            }

            fn nonce(&mut self, out: &mut [u8; NONCE_LEN]) -> bool {
                if self.nonces.is_none() {
                    let mut seed = [0u8; 44];
                    if getrandom::fill(&mut seed).is_err() {
                        return false;
                    }
                    let (key, iv) = seed.split_at(32);
                    self.nonces = ChaCha20::new_from_slices(key, iv).ok();
                }
                let Some(stream) = self.nonces.as_mut() else {
                    return false;
                };
                out.fill(0);
                stream.try_apply_keystream(out).is_ok()
            }

            /// `address` sealed into `text`; none when it is too long or no nonce could be had.
            pub(crate) fn seal<'t>(
                &mut self,
                address: &[u8],
                text: &'t mut [u8; TEXT_MAX],
            ) -> Option<&'t [u8]> {
                let mut raw = [0u8; RAW_MAX];
                let mut nonce = [0u8; NONCE_LEN];
                if address.len() > MAX_LEN || !self.nonce(&mut nonce) {
                    return None;
                }
                let (head, rest) = raw.split_at_mut(NONCE_LEN);
                head.copy_from_slice(&nonce);
                let body = rest.get_mut(..address.len())?;
                body.copy_from_slice(address);
                let tag = self
                    .aead
                    .encrypt_in_place_detached(XNonce::from_slice(&nonce), AAD, body)
                    .ok()?;
                rest.get_mut(address.len()..address.len() + TAG_LEN)?
                    .copy_from_slice(&tag);
                let len = encode(raw.get(..NONCE_LEN + address.len() + TAG_LEN)?, text)?;
                text.get(..len)
            }

            /// The address `text` seals, opened into `out`; none for anything this did not seal.
            pub(crate) fn open<'o>(
                &self,
                text: &[u8],
                out: &'o mut [u8; MAX_LEN],
            ) -> Option<&'o [u8]> {
                let mut raw = [0u8; RAW_MAX];
                let len = decode(text, &mut raw)?;
                let body_len = len.checked_sub(NONCE_LEN + TAG_LEN)?;
                let (nonce, rest) = raw.split_at(NONCE_LEN);
                let (body, tag) = rest.get(..body_len + TAG_LEN)?.split_at(body_len);
                let opened = out.get_mut(..body_len)?;
                opened.copy_from_slice(body);
                self.aead
                    .decrypt_in_place_detached(
                        XNonce::from_slice(nonce),
                        AAD,
                        opened,
                        Tag::from_slice(tag),
                    )
                    .ok()?;
                Some(opened)
            }
        }

        fn encode(raw: &[u8], text: &mut [u8; TEXT_MAX]) -> Option<usize> {
            let mut n = 0;
            for chunk in raw.chunks(3) {
                let b = [
                    *chunk.first()?,
                    chunk.get(1).copied().unwrap_or(0),
                    chunk.get(2).copied().unwrap_or(0),
                ];
                let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    let six = (v >> (18 - 6 * i)) & 63;
                    *text.get_mut(n)? = *ALPHABET.get(six as usize)?;
                    n += 1;
                }
            }
            Some(n)
        }

        fn decode(text: &[u8], raw: &mut [u8; RAW_MAX]) -> Option<usize> {
            let mut n = 0;
            for chunk in text.chunks(4) {
                if chunk.len() < 2 {
                    return None;
                }
                let mut v = 0u32;
                for (i, c) in chunk.iter().enumerate() {
                    let six = ALPHABET.iter().position(|a| a == c)?;
                    v |= (six as u32) << (18 - 6 * i);
                }
                for i in 0..chunk.len() - 1 {
                    *raw.get_mut(n)? = (v >> (16 - 8 * i)) as u8;
                    n += 1;
                }
            }
            Some(n)
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn a_sealed_address_opens_and_shows_nothing_of_itself() {
                let mut sealer = Sealer::new(&[7; 32]);
                let mut text = [0u8; TEXT_MAX];
                let token = sealer
                    .seal(b"127.0.0.1:8081", &mut text)
                    .map(<[u8]>::to_vec);
                let token = token.unwrap_or_default();
                assert!(!token.windows(9).any(|w| w == b"127.0.0.1"));
                let mut out = [0u8; MAX_LEN];
                assert_eq!(sealer.open(&token, &mut out), Some(&b"127.0.0.1:8081"[..]));
                let mut again = [0u8; TEXT_MAX];
                let second = sealer
                    .seal(b"127.0.0.1:8081", &mut again)
                    .map(<[u8]>::to_vec);
                assert_ne!(second, Some(token), "a fresh nonce per token");
            }

            #[test]
            fn a_changed_or_foreign_token_opens_to_nothing() {
                let mut sealer = Sealer::new(&[7; 32]);
                let mut text = [0u8; TEXT_MAX];
                let mut token = sealer
                    .seal(b"127.0.0.1:8081", &mut text)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let mut out = [0u8; MAX_LEN];
                assert_eq!(Sealer::new(&[8; 32]).open(&token, &mut out), None);
                if let Some(c) = token.get_mut(30) {
                    *c = if *c == b'A' { b'B' } else { b'A' };
                }
                assert_eq!(sealer.open(&token, &mut out), None);
                assert_eq!(sealer.open(b"127.0.0.1:8081", &mut out), None);
                assert_eq!(sealer.open(b"", &mut out), None);
            }
        }
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
            Some(Box::new(Sticky {
                cookie: Vec::new(),
                #[cfg(feature = "sealed")]
                opened: ([0; MAX_LEN], 0),
            }))
        }
    }

    /// The sealed variant's cipher and nonces, one per worker (a VM is one thread).
    #[cfg(feature = "sealed")]
    mod sealer {
        use crate::session::token::Sealer;
        use std::cell::RefCell;

        /// The measuring stick's key: fixed, as a floor needs no rotation.
        const KEY: [u8; 32] = [0x5a; 32];

        thread_local! {
            pub(super) static SEALER: RefCell<Sealer> = RefCell::new(Sealer::new(&KEY));
        }
    }

    /// One stream. The SDK hands every value over in a `Vec` of its own; the request's
    /// `Cookie` is kept in it as it came, and the endpoint read from it in place (the sealed
    /// variant opens it into `opened`, on the stream's own bytes).
    struct Sticky {
        cookie: Vec<u8>,
        #[cfg(feature = "sealed")]
        opened: ([u8; MAX_LEN], usize),
    }

    impl Sticky {
        #[cfg(not(feature = "sealed"))]
        fn endpoint(&self) -> &[u8] {
            pinned(&self.cookie)
        }

        #[cfg(feature = "sealed")]
        fn endpoint(&self) -> &[u8] {
            self.opened.0.get(..self.opened.1).unwrap_or_default()
        }
    }

    impl Context for Sticky {}

    // Host-call failures are let go, as sticky.wat lets them go: the request goes on unpinned.
    impl HttpContext for Sticky {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.cookie = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "cookie")
                .ok()
                .flatten()
                .unwrap_or_default();
            #[cfg(feature = "sealed")]
            {
                let token = pinned(&self.cookie);
                if !token.is_empty() {
                    let (buf, len) = &mut self.opened;
                    *len = sealer::SEALER
                        .with(|s| s.borrow().open(token, buf).map(<[u8]>::len))
                        .unwrap_or(0);
                }
            }
            let endpoint = self.endpoint();
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
            let upstream: &[u8] = &upstream;
            #[cfg(feature = "sealed")]
            let mut text = [0u8; crate::session::token::TEXT_MAX];
            // The token goes where sticky.wat puts the address.
            #[cfg(feature = "sealed")]
            let upstream = if upstream == self.endpoint() {
                return Action::Continue;
            } else {
                match sealer::SEALER.with(|s| s.borrow_mut().seal(upstream, &mut text)) {
                    Some(token) => token,
                    None => return Action::Continue,
                }
            };
            let mut buf = [0u8; COOKIE_PREFIX.len() + MAX_LEN];
            if let Some(value) = set_cookie(self.endpoint(), upstream, &mut buf) {
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
