//! Byte codecs and session ids, free of any host.
//!
//! The tokens clients carry are sealed pins (`seal`), written in unpadded base64url (this
//! module's codec). A `SessionId` is the 128-bit key of a binding in the table (`table`): a
//! salted hash of a learned id or client address, never shown to clients. Entropy (for the
//! nonces of sealed tokens) comes through the `Entropy` trait.

use std::fmt;

/// Bytes of randomness in a session id.
pub const ID_LEN: usize = 16;
/// Characters of its base64url text.
pub const TOKEN_LEN: usize = 22;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; ID_LEN]);

impl fmt::Debug for SessionId {
    // Logs show a short prefix only: enough to follow a session, not enough to steal it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        write!(f, "{}…", text.get(..6).unwrap_or(""))
    }
}

/// Where fresh session ids come from.
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]) -> bool;
}

/// The operating system's (WASI `random_get` inside Envoy). wasm32-unknown-unknown has none:
/// there it exists only in tests, which take Node's `crypto.getRandomValues`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_os = "unknown"))))]
pub struct SystemEntropy;

#[cfg(any(test, not(all(target_arch = "wasm32", target_os = "unknown"))))]
impl Entropy for SystemEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Unpadded base64url of `bytes`.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..=chunk.len() {
            let index = (n >> (18 - 6 * k)) & 63;
            out.push(char::from(
                ALPHABET.get(index as usize).copied().unwrap_or(b'A'),
            ));
        }
    }
    out
}

/// Decodes canonical unpadded base64url; anything else gives `None`.
pub fn base64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    decode_with(text, sextet)
}

/// Decodes base64 in either alphabet, padded or not (how people write keys).
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let trimmed = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    decode_with(trimmed, |c| match c {
        b'+' => Some(62),
        b'/' => Some(63),
        other => sextet(other),
    })
}

fn decode_with(text: &[u8], value: impl Fn(u8) -> Option<u32>) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in text {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, or two spellings would decode to the same bytes.
    (acc == 0).then_some(out)
}

impl SessionId {
    /// A fresh random id, or `None` if the host gave no randomness (then no session is issued
    /// rather than a guessable one).
    pub fn generate(entropy: &mut dyn Entropy) -> Option<SessionId> {
        let mut id = [0u8; ID_LEN];
        entropy.fill(&mut id).then_some(SessionId(id))
    }

    pub fn encode(&self) -> String {
        base64url_encode(&self.0)
    }

    /// Reads a token; anything that is not exactly a token gives `None`.
    pub fn decode(text: &[u8]) -> Option<SessionId> {
        if text.len() != TOKEN_LEN {
            return None;
        }
        base64url_decode(text)?.try_into().ok().map(SessionId)
    }

    /// Which bucket of the binding table holds this id. The id is already a salted hash, but
    /// FNV's low bits depend only on the low bits of its input bytes, and the bucket is taken
    /// modulo the bucket count: both halves are folded and mixed with MurmurHash3's finaliser
    /// so every bit of the id reaches every bit of the result. (Plain FNV of similar ids,
    /// `b0-0` to `b0-999`, overfilled buckets: 27 of 1 000 sessions evicted from a table of
    /// 3 200, where a uniform spread loses about 1.)
    pub fn hash(&self) -> u64 {
        let (lo, hi) = self.0.split_at(ID_LEN / 2);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            for (d, s) in w.iter_mut().zip(b) {
                *d = *s;
            }
            u64::from_le_bytes(w)
        };
        let mut h = word(lo) ^ word(hi).rotate_left(32);
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) -> bool {
            for b in buf.iter_mut() {
                self.0 = self.0.wrapping_add(37);
                *b = self.0;
            }
            true
        }
    }

    #[test]
    fn round_trip() {
        let mut e = Counter(0);
        for _ in 0..200 {
            let id = SessionId::generate(&mut e).unwrap();
            let text = id.encode();
            assert_eq!(text.len(), TOKEN_LEN);
            assert!(text.bytes().all(|c| sextet(c).is_some()));
            assert_eq!(SessionId::decode(text.as_bytes()), Some(id));
        }
    }

    #[test]
    fn known_vector() {
        // 16 zero bytes, then 16 0xff bytes, against base64url by hand.
        assert_eq!(SessionId([0; 16]).encode(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(SessionId([0xff; 16]).encode(), "_____________________w");
        assert_eq!(
            SessionId::decode(b"_____________________w"),
            Some(SessionId([0xff; 16]))
        );
    }

    #[test]
    fn rejects_everything_else() {
        let good = SessionId([7; 16]).encode();
        let mut non_canonical = good.clone().into_bytes();
        let last = non_canonical.len() - 1;
        non_canonical[last] = b'B' + (non_canonical[last] - b'A') % 4 + 1;
        for bad in [
            &b""[..],
            b"short",
            &good.as_bytes()[..21],
            format!("{good}A").as_bytes(),
            b"AAAAAAAAAAAAAAAAAAAAA=",
            b"AAAAAAAAAAAAAAAAAAAAA+",
            b"AAAAAAAAAAAAAAAAAAAA\xff\xfe",
            &non_canonical,
        ] {
            assert_eq!(
                SessionId::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn base64_both_alphabets_and_padding() {
        let bytes: Vec<u8> = (0..=255).collect();
        let url = base64url_encode(&bytes);
        assert_eq!(base64url_decode(url.as_bytes()), Some(bytes.clone()));
        let std = url.replace('-', "+").replace('_', "/");
        assert_eq!(base64_decode(std.as_bytes()), Some(bytes.clone()));
        assert_eq!(base64_decode(format!("{std}=").as_bytes()), Some(bytes));
        assert_eq!(
            base64_decode(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            Some(vec![0; 32])
        );
        assert_eq!(base64url_decode(b"A"), None);
        assert_eq!(base64url_decode(b"AB"), None, "non-zero leftover bits");
        assert_eq!(base64_decode(b"AA*A"), None);
    }

    #[test]
    fn no_entropy_no_id() {
        struct Broken;
        impl Entropy for Broken {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        assert!(SessionId::generate(&mut Broken).is_none());
        let mut sys = SystemEntropy;
        let a = SessionId::generate(&mut sys).unwrap();
        let b = SessionId::generate(&mut sys).unwrap();
        assert_ne!(a, b);
    }
}
