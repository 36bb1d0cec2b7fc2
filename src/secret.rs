//! The secrets tether works with, each derived for one purpose.
//!
//! A configured key (`keys`) or the per-Envoy secret is never used as it is: sealing and id
//! hashing each get a labelled secret derived from it (keyed BLAKE2s), so no two uses share
//! bytes. Learned ids and client addresses are hashed with SipHash-2-4 under the id secret, a
//! keyed PRF: clients cannot aim at a bucket of the binding table. The id secret comes from the
//! per-Envoy secret alone, never from `keys`, so rotating keys keeps every binding (tables are
//! per Envoy anyway).

use crate::entropy::Entropy;
use crate::table::{SessionId, Store, StoreError};
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

/// Bytes of a key: a configured one, the per-Envoy secret, or one derived from them.
pub const KEY_LEN: usize = 32;
pub type Key = [u8; KEY_LEN];

/// What a derived secret is for; its label is part of the derivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Sealing and opening tokens.
    Seal,
    /// Hashing learned ids and client addresses into table ids.
    IdHash,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Seal => b"tether/v2 seal",
            Purpose::IdHash => b"tether/v2 id-hash",
        }
    }
}

/// The secret for `purpose` derived from `key`.
pub fn derive(key: &Key, purpose: Purpose) -> Key {
    let mut out = [0u8; KEY_LEN];
    // A 32-byte key always fits BLAKE2s (up to 32): the error arm cannot be taken.
    if let Ok(mut mac) = <Blake2sMac256 as KeyInit>::new_from_slice(key) {
        mac.update(purpose.label());
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Table ids of learned ids and client addresses.
#[derive(Clone)]
pub struct IdHasher {
    key: [u8; 16],
}

impl IdHasher {
    pub fn new(process_secret: &Key) -> IdHasher {
        let derived = derive(process_secret, Purpose::IdHash);
        let mut key = [0u8; 16];
        for (k, d) in key.iter_mut().zip(derived.iter()) {
            *k = *d;
        }
        IdHasher { key }
    }

    pub fn id(&self, value: &[u8]) -> SessionId {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(value);
        SessionId(u128::from(h.finish128()).to_le_bytes())
    }
}

/// Where the per-Envoy secret lives in shared data (every worker of one Envoy sees it).
pub const PROCESS_SECRET_KEY: &str = "tether/v2/process-secret";

/// The CAS number a creating write carries. Envoy's compare-and-swap does not guard the
/// creation of a key (a write to a missing key always succeeds, whatever its CAS), but it does
/// refuse a write whose CAS differs from an existing key's. Envoy numbers writes from 1 up,
/// across all keys of the process, so no key carries this number until some four billion
/// writes have happened: a creating write with it succeeds only where the key is still missing.
/// Two workers that both found the secret missing therefore cannot both write theirs: the
/// second is refused and reads the first's.
const CREATE_ONLY: u32 = u32::MAX;

/// Reads of the secret before giving up (each retry means another worker wrote in between).
const ATTEMPTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    NoEntropy,
    Store,
    /// Every attempt lost a race (never seen: a race ends after one retry).
    Contended,
}

/// The per-Envoy secret: the one in shared data, or a new random one written there such that
/// every worker ends up with the same.
pub fn process_secret(store: &dyn Store, entropy: &mut dyn Entropy) -> Result<Key, SecretError> {
    for _ in 0..ATTEMPTS {
        let (value, cas) = store
            .get(PROCESS_SECRET_KEY)
            .map_err(|_| SecretError::Store)?;
        if let Some(key) = value.as_deref().and_then(|v| Key::try_from(v).ok()) {
            return Ok(key);
        }
        let mut key = [0u8; KEY_LEN];
        if !entropy.fill(&mut key) {
            return Err(SecretError::NoEntropy);
        }
        // A key that exists without a usable value (removed, damaged) has a CAS number of its
        // own, and the write is an ordinary compare-and-swap.
        match store.set(PROCESS_SECRET_KEY, &key, Some(cas.unwrap_or(CREATE_ONLY))) {
            Ok(()) => return Ok(key),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Failed) => return Err(SecretError::Store),
        }
    }
    Err(SecretError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SystemEntropy;
    use crate::testing::FakeStore;
    use std::cell::Cell;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn derived_secrets_differ_by_purpose_and_key() {
        let a = [1u8; KEY_LEN];
        let b = [2u8; KEY_LEN];
        assert_ne!(derive(&a, Purpose::Seal), derive(&a, Purpose::IdHash));
        assert_ne!(derive(&a, Purpose::Seal), derive(&b, Purpose::Seal));
        assert_ne!(derive(&a, Purpose::Seal), a, "never the key itself");
        assert_eq!(derive(&a, Purpose::Seal), derive(&a, Purpose::Seal));
    }

    #[test]
    fn ids_are_keyed() {
        let one = IdHasher::new(&[1; KEY_LEN]);
        let two = IdHasher::new(&[2; KEY_LEN]);
        assert_eq!(one.id(b"JSESSIONID-1"), one.id(b"JSESSIONID-1"));
        assert_ne!(one.id(b"JSESSIONID-1"), one.id(b"JSESSIONID-2"));
        assert_ne!(
            one.id(b"JSESSIONID-1"),
            two.id(b"JSESSIONID-1"),
            "another secret, another id"
        );
    }

    #[test]
    fn the_secret_is_made_once_and_then_read() {
        let store = FakeStore::default();
        let first = process_secret(&store, &mut SystemEntropy).unwrap();
        let again = process_secret(&store, &mut SystemEntropy).unwrap();
        assert_eq!(first, again);
        assert_eq!(store.sets.get(), 1);
    }

    /// A store where another worker writes its own secret between our read and our write, the
    /// race two workers configuring at once run.
    struct Racing<'a> {
        inner: &'a FakeStore,
        rival: Cell<Option<Key>>,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            let seen = self.inner.get(key);
            if let Some(rival) = self.rival.take() {
                // The rival read "missing" too, and writes before we do.
                assert_eq!(self.inner.get(key).unwrap().0, None);
                self.inner.set(key, &rival, Some(CREATE_ONLY)).unwrap();
            }
            seen
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn two_workers_racing_to_create_it_end_with_the_same_secret() {
        let store = FakeStore::default();
        let racing = Racing {
            inner: &store,
            rival: Cell::new(Some([5; KEY_LEN])),
        };
        let ours = process_secret(&racing, &mut SystemEntropy).unwrap();
        assert_eq!(
            ours, [5; KEY_LEN],
            "the later creator takes the earlier one's secret"
        );
        assert_eq!(process_secret(&store, &mut SystemEntropy).unwrap(), ours);
    }

    #[test]
    fn a_removed_or_damaged_secret_is_replaced_by_compare_and_swap() {
        let store = FakeStore::default();
        store.set(PROCESS_SECRET_KEY, b"short", None).unwrap();
        let key = process_secret(&store, &mut SystemEntropy).unwrap();
        assert_eq!(
            store.get(PROCESS_SECRET_KEY).unwrap().0.as_deref(),
            Some(&key[..])
        );
    }

    #[test]
    fn no_entropy_no_secret() {
        struct Broken;
        impl Entropy for Broken {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        let store = FakeStore::default();
        assert_eq!(
            process_secret(&store, &mut Broken),
            Err(SecretError::NoEntropy)
        );
        assert_eq!(store.sets.get(), 0);
    }
}
