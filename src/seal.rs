//! Sealed tokens: what a cookie or header session carries.
//!
//! A token is the session's pin (endpoint, cluster, wall-clock start and last-seen times)
//! sealed with XChaCha20-Poly1305 under a secret derived from each configured key (or the
//! per-Envoy secret), with the carrier (cookie, header, companion cookie), the session name and
//! any bound bytes as associated data. It reveals nothing, cannot be forged or altered, opens
//! only where it was issued (a header token is no cookie token), and any Envoy holding one of
//! the keys reads the same pin and agrees on its expiry: replicas share no state.
//! The first key seals; every key opens (rotation: add the new key first, drop the old one
//! once the longest session has passed).

use crate::encoding::{base64url_decode, base64url_encode};
use crate::entropy::Entropy;
use crate::pin::Pin;
use crate::secret::{derive, Key, Purpose};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::cell::RefCell;
use std::fmt;
use std::hash::Hasher;
use std::rc::Rc;

const VERSION: u8 = 2;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Characters of base64url text that carry the last `TAG_LEN` bytes of a token.
const TAG_TEXT_LEN: usize = (TAG_LEN * 4).div_ceil(3);
/// Longest token text accepted: a bigger value is not ours, and opening it would cost. An
/// envelope of the longest id (`MAX_PAYLOAD_LEN`) with every field at its longest fits.
pub const MAX_TOKEN_LEN: usize = 1536;
/// Longest id an envelope carries.
pub const MAX_PAYLOAD_LEN: usize = 512;
/// Longest endpoint or cluster name a token carries.
pub const MAX_FIELD_LEN: usize = 255;

/// Where a token travels. Bound into every token, so one issued for one carrier never opens
/// in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The cookie of a `cookie` session.
    Cookie,
    /// The header of a `header` session.
    Header,
    /// The companion cookie of a learned application cookie.
    Companion,
    /// The envelope of an id the backend issued in a response header; it carries the id.
    Envelope,
}

impl Carrier {
    fn label(self) -> &'static str {
        match self {
            Carrier::Cookie => "cookie",
            Carrier::Header => "header",
            Carrier::Companion => "companion",
            Carrier::Envelope => "envelope",
        }
    }
}

/// Why no token could be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// No randomness for the nonce.
    NoEntropy,
    /// The endpoint or cluster name is longer than a token carries.
    TooLong,
    /// The cipher refused (never seen; reported rather than assumed away).
    Cipher,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::NoEntropy => "no_entropy",
            SealError::TooLong => "too_long",
            SealError::Cipher => "cipher",
        })
    }
}

pub struct Sealer {
    ciphers: Vec<XChaCha20Poly1305>,
    aad: Vec<u8>,
    /// Tokens this worker opened lately (see `Opened`).
    opened: RefCell<Opened>,
    /// Tokens put through the AEAD, for the tests of the cache.
    #[cfg(any(test, feature = "testing"))]
    decrypts: std::cell::Cell<u64>,
}

/// Slots of the cache of opened tokens, per policy and worker. An entry holds a token (at most
/// `MAX_TOKEN_LEN`), the bytes it is bound to (at most a learned id) and its pin, so the cache's
/// memory is bounded by the slots times those limits. Only tokens tether sealed get in, so
/// clients cannot choose those sizes.
pub const OPENED_SLOTS: usize = 512;

/// Tokens that opened lately, by their exact text and bound bytes. The same bytes under the same
/// keys always open to the same pin, so a session's next requests skip the AEAD (the costly
/// part of a request in V8) and cost a hash and a compare. Only tokens that opened are kept, so
/// forgeries cannot fill it; new keys mean a new `Sealer`, and so an empty cache. Expiry is
/// not cached: callers check it on every request. Two-way set associative: a slot pair keeps
/// the two most recently opened tokens that hash to it.
#[derive(Default)]
struct Opened {
    slots: Vec<Option<OpenedToken>>,
}

struct OpenedToken {
    text: Box<[u8]>,
    bound_to: Box<[u8]>,
    pin: Pin,
    payload: Rc<[u8]>,
}

impl Opened {
    /// The first slot of the pair where `text` lives; the other one is `index ^ 1`. Not keyed:
    /// a client who aims tokens at one pair only evicts its own, since only tokens that opened
    /// are kept.
    fn index(text: &[u8], bound_to: &[u8]) -> usize {
        // The end of a token is its authentication tag, as good as random: hashing it (and the
        // bound bytes) spreads tokens as well as hashing all of it would, at a fraction of the
        // work. Entries are matched on the whole text.
        let tail = text
            .get(text.len().saturating_sub(TAG_TEXT_LEN)..)
            .unwrap_or(text);
        let mut h = fnv::FnvHasher::default();
        h.write(tail);
        h.write_u8(0);
        h.write(bound_to);
        // Fold the high bits in: FNV's low bits depend on the low bits of the input only.
        let v = h.finish();
        ((v ^ (v >> 29) ^ (v >> 47)) as usize % OPENED_SLOTS) & !1
    }

    fn get(&self, text: &[u8], bound_to: &[u8]) -> Option<(Pin, Rc<[u8]>)> {
        let i = Self::index(text, bound_to);
        self.slots
            .get(i..i + 2)?
            .iter()
            .flatten()
            .find(|t| *t.text == *text && *t.bound_to == *bound_to)
            .map(|t| (t.pin.clone(), t.payload.clone()))
    }

    fn put(&mut self, text: &[u8], bound_to: &[u8], pin: &Pin, payload: &Rc<[u8]>) {
        if self.slots.is_empty() {
            self.slots.resize_with(OPENED_SLOTS, || None);
        }
        let i = Self::index(text, bound_to);
        let Some(pair) = self.slots.get_mut(i..i + 2) else {
            return;
        };
        // The newest goes first; the one it displaces moves to the second slot.
        pair.swap(0, 1);
        if let Some(first) = pair.first_mut() {
            *first = Some(OpenedToken {
                text: text.into(),
                bound_to: bound_to.into(),
                pin: pin.clone(),
                payload: payload.clone(),
            });
        }
    }

    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

impl Sealer {
    /// `keys` must not be empty: the first seals. Each is used through its derived sealing
    /// secret. `carrier` and `scope` (the session name) are bound into every token, so a token
    /// of one carrier or policy does not open under another.
    pub fn new(keys: &[Key], carrier: Carrier, scope: &str) -> Sealer {
        let ciphers = keys
            .iter()
            .map(|k| XChaCha20Poly1305::new((&derive(k, Purpose::Seal)).into()))
            .collect();
        Sealer {
            ciphers,
            aad: format!("tether/v{VERSION}/{}/{scope}", carrier.label()).into_bytes(),
            opened: RefCell::default(),
            #[cfg(any(test, feature = "testing"))]
            decrypts: std::cell::Cell::new(0),
        }
    }

    /// `bound_to` is also authenticated: the token opens only when the same bytes are given
    /// (a companion token for a learned id opens only next to that id).
    fn aad(&self, bound_to: &[u8]) -> Vec<u8> {
        [self.aad.as_slice(), &[0], bound_to].concat()
    }

    pub fn seal(
        &self,
        pin: &Pin,
        bound_to: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<String, SealError> {
        self.seal_carrying(pin, b"", bound_to, entropy)
    }

    /// A token for `pin` that also carries `payload` (an envelope's id).
    pub fn seal_carrying(
        &self,
        pin: &Pin,
        payload: &[u8],
        bound_to: &[u8],
        entropy: &mut dyn Entropy,
    ) -> Result<String, SealError> {
        let cipher = self.ciphers.first().ok_or(SealError::Cipher)?;
        let plain = encode_pin(pin, payload).ok_or(SealError::TooLong)?;
        let mut nonce = [0u8; NONCE_LEN];
        if !entropy.fill(&mut nonce) {
            return Err(SealError::NoEntropy);
        }
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &self.aad(bound_to),
                },
            )
            .map_err(|_| SealError::Cipher)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(base64url_encode(&out))
    }

    /// The pin inside `text`, if one of our keys sealed it for this carrier and scope.
    pub fn open(&self, text: &[u8], bound_to: &[u8]) -> Option<Pin> {
        self.open_carrying(text, bound_to).map(|(pin, _)| pin)
    }

    /// The pin inside `text` and what it carries.
    pub fn open_carrying(&self, text: &[u8], bound_to: &[u8]) -> Option<(Pin, Rc<[u8]>)> {
        if text.len() > MAX_TOKEN_LEN {
            return None;
        }
        if let Some(found) = self
            .opened
            .try_borrow()
            .ok()
            .and_then(|o| o.get(text, bound_to))
        {
            return Some(found);
        }
        let (pin, payload) = self.decrypt(text, bound_to)?;
        if let Ok(mut opened) = self.opened.try_borrow_mut() {
            opened.put(text, bound_to, &pin, &payload);
        }
        Some((pin, payload))
    }

    /// Tokens put through the AEAD so far (a token found in the cache is not counted).
    #[cfg(any(test, feature = "testing"))]
    pub fn decrypts(&self) -> u64 {
        self.decrypts.get()
    }

    /// Tokens held in the cache of opened tokens.
    pub fn cached(&self) -> usize {
        self.opened.try_borrow().map_or(0, |o| o.len())
    }

    fn decrypt(&self, text: &[u8], bound_to: &[u8]) -> Option<(Pin, Rc<[u8]>)> {
        #[cfg(any(test, feature = "testing"))]
        self.decrypts.set(self.decrypts.get().saturating_add(1));
        let raw = base64url_decode(text)?;
        let (nonce, sealed) = frame(&raw).ok()?;
        let nonce = XNonce::from_slice(nonce);
        let aad = self.aad(bound_to);
        self.ciphers.iter().find_map(|cipher| {
            let plain = cipher
                .decrypt(
                    nonce,
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .ok()?;
            decode_pin(&plain)
        })
    }
}

/// Why a text is not a token at all, whatever the keys: what an operator's tool says before it
/// tries any key (a token that has the form but opens under no key is told apart from these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// Longer than any token tether issues (`MAX_TOKEN_LEN`).
    TooLong,
    /// Not canonical unpadded base64url.
    NotBase64url,
    /// Another token format: its first byte names this version, not tether's.
    Version(u8),
    /// Shorter than a nonce and a tag.
    TooShort,
}

impl fmt::Display for FormError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormError::TooLong => write!(f, "longer than {MAX_TOKEN_LEN} characters"),
            FormError::NotBase64url => f.write_str("not unpadded base64url"),
            FormError::Version(v) => {
                write!(f, "format version {v}, not {VERSION} (not this tether's)")
            }
            FormError::TooShort => f.write_str("too short to hold a nonce and a tag"),
        }
    }
}

/// Whether `text` has the form of a token (the checks `Sealer` makes before the AEAD).
pub fn check_form(text: &[u8]) -> Result<(), FormError> {
    if text.len() > MAX_TOKEN_LEN {
        return Err(FormError::TooLong);
    }
    let raw = base64url_decode(text).ok_or(FormError::NotBase64url)?;
    frame(&raw).map(|_| ())
}

/// A decoded token's nonce and sealed bytes.
fn frame(raw: &[u8]) -> Result<(&[u8], &[u8]), FormError> {
    let (&version, rest) = raw.split_first().ok_or(FormError::TooShort)?;
    if version != VERSION {
        return Err(FormError::Version(version));
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(FormError::TooShort);
    }
    Ok(rest.split_at(NONCE_LEN))
}

/// The plaintext: created (8, LE), last seen (8, LE), endpoint length (1) and bytes, cluster
/// length (1) and bytes, and, for an envelope, the payload's length (2, LE) and bytes.
fn encode_pin(pin: &Pin, payload: &[u8]) -> Option<Vec<u8>> {
    let cluster = pin.cluster.as_deref().unwrap_or("");
    if pin.endpoint.len() > MAX_FIELD_LEN
        || cluster.len() > MAX_FIELD_LEN
        || payload.len() > MAX_PAYLOAD_LEN
    {
        return None;
    }
    let mut out = Vec::with_capacity(20 + pin.endpoint.len() + cluster.len() + payload.len());
    out.extend_from_slice(&pin.created_ms.to_le_bytes());
    out.extend_from_slice(&pin.last_seen_ms.to_le_bytes());
    out.push(pin.endpoint.len() as u8);
    out.extend_from_slice(pin.endpoint.as_bytes());
    out.push(cluster.len() as u8);
    out.extend_from_slice(cluster.as_bytes());
    if !payload.is_empty() {
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
    }
    Some(out)
}

fn decode_pin(bytes: &[u8]) -> Option<(Pin, Rc<[u8]>)> {
    let (created, rest) = split(bytes, 8)?;
    let (last, rest) = split(rest, 8)?;
    let (endpoint, rest) = string(rest)?;
    let (cluster, rest) = string(rest)?;
    if endpoint.is_empty() {
        return None;
    }
    let payload: Rc<[u8]> = if rest.is_empty() {
        Rc::from(&[][..])
    } else {
        let (len, rest) = split(rest, 2)?;
        let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
        if rest.len() != len || len == 0 || len > MAX_PAYLOAD_LEN {
            return None;
        }
        Rc::from(rest)
    };
    let pin = Pin {
        endpoint: endpoint.into(),
        cluster: (!cluster.is_empty()).then(|| cluster.into()),
        created_ms: u64::from_le_bytes(created.try_into().ok()?),
        last_seen_ms: u64::from_le_bytes(last.try_into().ok()?),
    };
    Some((pin, payload))
}

fn split(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

fn string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (text, rest) = split(rest, usize::from(len))?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SystemEntropy;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn pin() -> Pin {
        Pin {
            endpoint: "127.0.0.1:8081".into(),
            cluster: Some("app-v1".into()),
            created_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_100_000,
        }
    }

    #[test]
    fn seal_open_round_trip_and_no_address_inside() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_eq!(s.open(t.as_bytes(), b""), Some(pin()));
        assert!(!t.contains("127") && !t.contains("8081"));
        let t2 = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_ne!(t, t2, "a fresh nonce every time");
        let no_cluster = Pin {
            cluster: None,
            ..pin()
        };
        let t3 = s.seal(&no_cluster, b"", &mut SystemEntropy).unwrap();
        assert_eq!(s.open(t3.as_bytes(), b""), Some(no_cluster));
    }

    #[test]
    fn the_form_of_a_token_is_told_before_any_key() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_eq!(check_form(t.as_bytes()), Ok(()));
        assert_eq!(check_form(b"not a token!"), Err(FormError::NotBase64url));
        assert_eq!(check_form(b""), Err(FormError::TooShort));
        assert_eq!(check_form(b"AQID"), Err(FormError::Version(1)));
        assert_eq!(check_form(b"AgID"), Err(FormError::TooShort));
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(check_form(long.as_bytes()), Err(FormError::TooLong));
    }

    #[test]
    fn every_bit_flip_truncation_and_extension_is_refused() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        let raw = base64url_decode(t.as_bytes()).unwrap();
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                s.open(base64url_encode(&bad).as_bytes(), b""),
                None,
                "bit {bit}"
            );
        }
        for cut in 0..raw.len() {
            assert_eq!(
                s.open(base64url_encode(&raw[..cut]).as_bytes(), b""),
                None,
                "cut {cut}"
            );
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(s.open(base64url_encode(&longer).as_bytes(), b""), None);
        assert_eq!(s.open(format!("{t}A").as_bytes(), b""), None);
    }

    #[test]
    fn keys_rotate_and_scopes_separate() {
        let old = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let rotated = Sealer::new(&[[2; 32], [1; 32]], Carrier::Cookie, "tether");
        let removed = Sealer::new(&[[2; 32]], Carrier::Cookie, "tether");
        let t_old = old.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_eq!(
            rotated.open(t_old.as_bytes(), b""),
            Some(pin()),
            "old tokens open during rotation"
        );
        assert_eq!(
            removed.open(t_old.as_bytes(), b""),
            None,
            "a removed key opens nothing"
        );
        let t_new = rotated.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_eq!(
            removed.open(t_new.as_bytes(), b""),
            Some(pin()),
            "the first key seals"
        );
        let other_scope = Sealer::new(&[[1; 32]], Carrier::Cookie, "cart");
        assert_eq!(
            other_scope.open(t_old.as_bytes(), b""),
            None,
            "a token of another policy"
        );
    }

    #[test]
    fn bound_tokens_open_only_next_to_their_id() {
        let s = Sealer::new(&[[1; 32]], Carrier::Companion, "JSESSIONID");
        let t = s.seal(&pin(), b"abc", &mut SystemEntropy).unwrap();
        assert_eq!(s.open(t.as_bytes(), b"abc"), Some(pin()));
        assert_eq!(s.open(t.as_bytes(), b"abd"), None);
        assert_eq!(s.open(t.as_bytes(), b""), None);
    }

    #[test]
    fn a_token_seen_before_skips_the_aead_and_opens_to_the_same_pin() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        for _ in 0..10 {
            assert_eq!(s.open(t.as_bytes(), b""), Some(pin()));
        }
        assert_eq!(s.decrypts(), 1, "opened once, then found in the cache");
        // Bound bytes are part of the entry: a cached token is not a pass for another id.
        let bound = s.seal(&pin(), b"abc", &mut SystemEntropy).unwrap();
        assert_eq!(s.open(bound.as_bytes(), b"abc"), Some(pin()));
        assert_eq!(s.open(bound.as_bytes(), b"abd"), None);
        assert_eq!(s.open(bound.as_bytes(), b""), None);
        assert_eq!(s.open(bound.as_bytes(), b"abc"), Some(pin()));
        assert_eq!(s.decrypts(), 4);
    }

    #[test]
    fn the_cache_keeps_no_forgery_and_stays_bounded() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = s.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert!(s.open(t.as_bytes(), b"").is_some());
        // Every one-bit change of a cached token is still refused, and each time by the AEAD.
        let raw = base64url_decode(t.as_bytes()).unwrap();
        for bit in 0..raw.len() * 8 {
            let mut bad = raw.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(s.open(base64url_encode(&bad).as_bytes(), b""), None);
        }
        assert_eq!(s.decrypts(), 1 + raw.len() as u64 * 8);
        assert_eq!(s.cached(), 1, "refused tokens are not kept");
        // Far more sessions than slots: the cache holds at most OPENED_SLOTS, and every
        // token still opens (from the cache or through the AEAD).
        let tokens: Vec<String> = (0..3 * OPENED_SLOTS)
            .map(|i| {
                let p = Pin {
                    created_ms: i as u64,
                    ..pin()
                };
                s.seal(&p, b"", &mut SystemEntropy).unwrap()
            })
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(s.open(t.as_bytes(), b"").unwrap().created_ms, i as u64);
        }
        assert!(s.cached() <= OPENED_SLOTS);
        assert!(
            s.cached() > OPENED_SLOTS / 2,
            "{} of {OPENED_SLOTS}",
            s.cached()
        );
        for (i, t) in tokens.iter().enumerate().rev() {
            assert_eq!(s.open(t.as_bytes(), b"").unwrap().created_ms, i as u64);
        }
    }

    #[test]
    fn new_keys_start_with_an_empty_cache() {
        let old = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let t = old.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert!(old.open(t.as_bytes(), b"").is_some());
        assert_eq!(old.cached(), 1);
        // A reconfiguration builds a new Sealer: the removed key's token is not remembered.
        let removed = Sealer::new(&[[2; 32]], Carrier::Cookie, "tether");
        assert_eq!(removed.cached(), 0);
        assert_eq!(removed.open(t.as_bytes(), b""), None);
    }

    #[test]
    fn garbage_is_refused() {
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        for bad in [
            &b""[..],
            b"x",
            b"tether",
            &[0xff; 100],
            &[b'A'; 1000],
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(s.open(bad, b""), None);
        }
    }

    /// Issue #12, defect 9: a `header` token opened as a `cookie` token of the same name. The
    /// carrier is bound into the token now.
    #[test]
    fn a_token_opens_only_in_the_carrier_it_was_issued_for() {
        let keys = [[1; 32]];
        let cookie = Sealer::new(&keys, Carrier::Cookie, "tether");
        let header = Sealer::new(&keys, Carrier::Header, "tether");
        let companion = Sealer::new(&keys, Carrier::Companion, "tether");
        let t = header.seal(&pin(), b"", &mut SystemEntropy).unwrap();
        assert_eq!(header.open(t.as_bytes(), b""), Some(pin()));
        assert_eq!(cookie.open(t.as_bytes(), b""), None);
        assert_eq!(companion.open(t.as_bytes(), b""), None);
    }

    /// Issue #12, defect 9: every sealing failure was reported as `no_entropy`.
    #[test]
    fn sealing_failures_say_why() {
        struct Broken;
        impl Entropy for Broken {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        let s = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        assert_eq!(s.seal(&pin(), b"", &mut Broken), Err(SealError::NoEntropy));
        let long = Pin {
            endpoint: "e".repeat(MAX_FIELD_LEN + 1).into(),
            ..pin()
        };
        assert_eq!(
            s.seal(&long, b"", &mut SystemEntropy),
            Err(SealError::TooLong)
        );
        let long_cluster = Pin {
            cluster: Some("c".repeat(MAX_FIELD_LEN + 1).into()),
            ..pin()
        };
        assert_eq!(
            s.seal(&long_cluster, b"", &mut SystemEntropy),
            Err(SealError::TooLong)
        );
        assert_eq!(SealError::TooLong.to_string(), "too_long");
    }
}
