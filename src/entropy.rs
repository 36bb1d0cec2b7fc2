//! Where unguessable bytes come from: token nonces and the per-Envoy secret.
//!
//! The operating system's source (WASI `random_get` inside Envoy) costs a host call; each worker
//! therefore draws its nonces from its own ChaCha20 keystream (`Csprng`), seeded from the OS and
//! re-seeded after every `RESEED_BYTES` it hands out, so a new session costs no host call.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;

/// A source of random bytes. `false`: none could be had, and the caller must not go on as if
/// it had (no token is sealed with a guessable nonce).
pub trait Entropy {
    fn fill(&mut self, buf: &mut [u8]) -> bool;
}

/// The operating system's. wasm32-unknown-unknown has none: there it exists only in tests,
/// which take Node's `crypto.getRandomValues`.
#[cfg(any(test, not(all(target_arch = "wasm32", target_os = "unknown"))))]
pub struct SystemEntropy;

#[cfg(any(test, not(all(target_arch = "wasm32", target_os = "unknown"))))]
impl Entropy for SystemEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }
}

/// Bytes a `Csprng` hands out before it takes a fresh seed: a bounded stretch of output per
/// seed, and one OS call per many thousand nonces.
pub const RESEED_BYTES: usize = 1 << 19;

/// A ChaCha20 keystream seeded from `seed_source`. Unseeded until first used.
pub struct Csprng<S: Entropy> {
    seed_source: S,
    stream: Option<ChaCha20>,
    left: usize,
}

impl<S: Entropy> Csprng<S> {
    pub const fn new(seed_source: S) -> Self {
        Csprng {
            seed_source,
            stream: None,
            left: 0,
        }
    }

    fn reseed(&mut self) -> bool {
        let mut seed = [0u8; 44];
        if !self.seed_source.fill(&mut seed) {
            self.stream = None;
            return false;
        }
        let (key, nonce) = seed.split_at(32);
        self.stream = ChaCha20::new_from_slices(key, nonce).ok();
        self.left = RESEED_BYTES;
        seed.fill(0);
        self.stream.is_some()
    }
}

impl<S: Entropy> Entropy for Csprng<S> {
    fn fill(&mut self, buf: &mut [u8]) -> bool {
        if (self.stream.is_none() || self.left < buf.len()) && !self.reseed() {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        buf.fill(0);
        if stream.try_apply_keystream(buf).is_err() {
            self.stream = None;
            return false;
        }
        self.left = self.left.saturating_sub(buf.len());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Counts how often it was asked; `fails` makes it give nothing.
    struct Counting {
        calls: usize,
        fails: bool,
    }

    impl Entropy for Counting {
        fn fill(&mut self, buf: &mut [u8]) -> bool {
            self.calls += 1;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (self.calls * 31 + i) as u8;
            }
            !self.fails
        }
    }

    #[test]
    fn one_seed_serves_many_nonces_then_it_reseeds() {
        let mut rng = Csprng::new(Counting {
            calls: 0,
            fails: false,
        });
        let mut seen = std::collections::HashSet::new();
        let per_seed = RESEED_BYTES / 24;
        for _ in 0..per_seed {
            let mut nonce = [0u8; 24];
            assert!(rng.fill(&mut nonce));
            assert!(seen.insert(nonce), "a nonce came twice");
        }
        assert_eq!(
            rng.seed_source.calls, 1,
            "one OS call for {per_seed} nonces"
        );
        let mut nonce = [0u8; 24];
        assert!(rng.fill(&mut nonce));
        assert_eq!(rng.seed_source.calls, 2, "a fresh seed after RESEED_BYTES");
        assert!(seen.insert(nonce));
    }

    #[test]
    fn no_seed_no_bytes() {
        let mut rng = Csprng::new(Counting {
            calls: 0,
            fails: true,
        });
        let mut nonce = [7u8; 24];
        assert!(!rng.fill(&mut nonce));
        assert!(!rng.fill(&mut nonce), "still nothing, and asked again");
        assert_eq!(rng.seed_source.calls, 2);
    }

    #[test]
    fn system_entropy_differs_each_time() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        assert!(SystemEntropy.fill(&mut a) && SystemEntropy.fill(&mut b));
        assert_ne!(a, b);
    }
}
