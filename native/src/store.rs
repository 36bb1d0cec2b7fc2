//! The process-wide `Store`: what Envoy's shared data is to the Wasm build (the binding table's
//! buckets, the per-Envoy secret), kept in this library's memory, which every worker shares.
//!
//! Keys are spread over mutex-guarded shards so workers touching different buckets do not wait
//! for each other; each value carries a CAS number, bumped on every write, with shared data's
//! rules: a write with a number succeeds only if the key still has it, and a write to a key
//! that does not exist always succeeds. The number of keys is capped: the core's tables are a
//! fixed number of buckets, and a write that would pass the cap is refused, never grown into.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use tether::table::{Store, StoreError};

type Fnv = BuildHasherDefault<fnv::FnvHasher>;

const SHARDS: usize = 64;
/// Keys the whole store holds at most: far above any table a configuration can ask for
/// (`max_sessions` buckets of eight bindings), so it is only reached by a defect.
pub const MAX_KEYS: usize = 1 << 22;

/// A key's value, sized exactly: a bucket's bytes change length with every binding added or
/// removed, and a `Vec` would keep the largest capacity it ever had, on every key of a table
/// of millions.
struct Entry {
    value: Box<[u8]>,
    cas: u32,
}

/// A bucket's key (`<table prefix>/<index>`) as two numbers: the prefix's hash and the index.
/// Every bucket of every table exists from the start (`BindingTable::prepare`), so a table of
/// millions would otherwise keep millions of copies of its prefix. The hash is keyed with a
/// per-process random key: two prefixes (a handful, from the configuration) meet by chance one
/// time in 2^64, and no one can aim at it.
#[derive(PartialEq, Eq, Hash, Clone, Copy)]
struct Indexed {
    prefix: u64,
    index: u64,
}

#[derive(Default)]
struct Shard {
    indexed: HashMap<Indexed, Entry, Fnv>,
    /// Keys that are not `<prefix>/<index>` (the per-Envoy secret).
    named: HashMap<Box<str>, Entry, Fnv>,
}

impl Shard {
    fn len(&self) -> usize {
        self.indexed.len() + self.named.len()
    }
}

enum Key<'k> {
    Indexed(Indexed),
    Named(&'k str),
}

pub struct ProcessStore {
    shards: Vec<Mutex<Shard>>,
    max_keys_per_shard: usize,
    prefixes: RandomState,
    hasher: Fnv,
}

impl ProcessStore {
    pub fn new(max_keys: usize) -> ProcessStore {
        ProcessStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            prefixes: RandomState::new(),
            hasher: Fnv::default(),
        }
    }

    /// A key ending in a canonical decimal index (no sign, no leading zero) is `Indexed`, so
    /// that two texts never make one key; any other is kept as it is.
    fn key<'k>(&self, key: &'k str) -> Key<'k> {
        let Some((prefix, index)) = key.rsplit_once('/') else {
            return Key::Named(key);
        };
        let canonical = !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && (index == "0" || !index.starts_with('0'));
        match index.parse::<u64>() {
            Ok(index) if canonical => Key::Indexed(Indexed {
                prefix: self.prefixes.hash_one(prefix),
                index,
            }),
            _ => Key::Named(key),
        }
    }

    fn shard(&self, key: &Key<'_>) -> Option<MutexGuard<'_, Shard>> {
        let hash = match key {
            Key::Indexed(k) => self.hasher.hash_one(k),
            Key::Named(k) => self.hasher.hash_one(k),
        };
        let index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        // A panic while a shard was held (caught at the hook) leaves a poisoned lock; the map
        // inside is whole (every write is one insert), so it is used as it is.
        self.shards
            .get(index)
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The CAS number after `cas`: never 0 and never `u32::MAX`, which callers use as "create only"
/// (`secret::process_secret`).
fn next_cas(cas: u32) -> u32 {
    match cas.wrapping_add(1) {
        0 | u32::MAX => 1,
        n => n,
    }
}

impl Store for ProcessStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let key = self.key(key);
        let shard = self.shard(&key).ok_or(StoreError::Failed)?;
        let entry = match key {
            Key::Indexed(k) => shard.indexed.get(&k),
            Key::Named(k) => shard.named.get(k),
        };
        Ok(match entry {
            Some(e) => (Some(e.value.to_vec()), Some(e.cas)),
            None => (None, None),
        })
    }

    fn read(&self, key: &str, f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        let key = self.key(key);
        let shard = self.shard(&key).ok_or(StoreError::Failed)?;
        let entry = match key {
            Key::Indexed(k) => shard.indexed.get(&k),
            Key::Named(k) => shard.named.get(k),
        };
        // Under the shard's lock: `f` only decodes.
        f(entry.map(|e| &*e.value));
        Ok(())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let key = self.key(key);
        let mut shard = self.shard(&key).ok_or(StoreError::Failed)?;
        let full = shard.len() >= self.max_keys_per_shard;
        let entry = match key {
            Key::Indexed(k) => shard.indexed.get_mut(&k),
            Key::Named(k) => shard.named.get_mut(k),
        };
        match entry {
            Some(e) => {
                if cas.is_some_and(|c| c != e.cas) {
                    return Err(StoreError::CasMismatch);
                }
                if *e.value != *value {
                    e.value = value.into();
                }
                e.cas = next_cas(e.cas);
            }
            None => {
                if full {
                    return Err(StoreError::Failed);
                }
                let entry = Entry {
                    value: value.into(),
                    cas: 1,
                };
                match key {
                    Key::Indexed(k) => {
                        shard.indexed.insert(k, entry);
                    }
                    Key::Named(k) => {
                        shard.named.insert(k.into(), entry);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The store every configuration of this process shares (as shared data is shared by every VM
/// with one `vm_id`); it outlives configuration reloads, not the process.
pub fn global() -> &'static ProcessStore {
    static STORE: OnceLock<ProcessStore> = OnceLock::new();
    STORE.get_or_init(|| ProcessStore::new(MAX_KEYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_read_lends_what_get_copies() {
        let s = ProcessStore::new(16);
        for key in ["tether/t/7", "tether/secret"] {
            s.set(key, b"bytes", None).unwrap();
            let mut lent = None;
            s.read(key, &mut |v| lent = v.map(<[u8]>::to_vec)).unwrap();
            assert_eq!(lent, s.get(key).unwrap().0);
        }
        let mut lent = Some(Vec::new());
        s.read("tether/t/8", &mut |v| lent = v.map(<[u8]>::to_vec))
            .unwrap();
        assert_eq!(lent, None);
    }

    #[test]
    fn cas_guards_writes_to_existing_keys_only() {
        let s = ProcessStore::new(16);
        assert_eq!(s.get("k"), Ok((None, None)));
        // A missing key is written whatever the number (shared data's rule).
        s.set("k", b"a", Some(u32::MAX)).unwrap();
        let (v, cas) = s.get("k").unwrap();
        assert_eq!(v.as_deref(), Some(&b"a"[..]));
        let cas = cas.unwrap();
        assert_eq!(
            s.set("k", b"b", Some(cas + 7)),
            Err(StoreError::CasMismatch)
        );
        s.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(s.set("k", b"c", Some(cas)), Err(StoreError::CasMismatch));
        s.set("k", b"c", None).unwrap();
        assert_eq!(s.get("k").unwrap().0.as_deref(), Some(&b"c"[..]));
    }

    #[test]
    fn cas_numbers_skip_zero_and_create_only() {
        assert_eq!(next_cas(u32::MAX - 1), 1);
        assert_eq!(next_cas(u32::MAX), 1);
        assert_eq!(next_cas(1), 2);
    }

    #[test]
    fn the_key_count_is_capped_but_existing_keys_still_change() {
        let s = ProcessStore::new(SHARDS);
        let mut refused = 0;
        for i in 0..SHARDS * 4 {
            if s.set(&format!("k{i}"), b"v", None).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
        let kept = (0..SHARDS * 4)
            .map(|i| format!("k{i}"))
            .find(|k| s.get(k).unwrap().0.is_some())
            .unwrap();
        s.set(&kept, b"w", None).unwrap();
    }

    #[test]
    fn workers_racing_on_one_key_lose_no_increment() {
        let s = Arc::new(ProcessStore::new(16));
        s.set("n", &0u64.to_le_bytes(), None).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        for _attempt in 0..1000 {
                            let (v, cas) = s.get("n").unwrap();
                            let n = u64::from_le_bytes(v.unwrap().try_into().unwrap());
                            if s.set("n", &(n + 1).to_le_bytes(), cas).is_ok() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = s.get("n").unwrap().0.unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 2000);
    }

    #[test]
    fn keys_that_differ_as_text_are_different_keys() {
        let s = ProcessStore::new(1 << 10);
        let keys = [
            "t/v1/sid/8/1",
            "t/v1/sid/8/01",
            "t/v1/sid/8/+1",
            "t/v1/sid/8/",
            "t/v1/sid/9/1",
            "t/v1/sid/8/18446744073709551616",
            "t/v1/sid/8/0",
            "secret",
            "t/v1/sid/8/1/",
        ];
        for (i, k) in keys.iter().enumerate() {
            s.set(k, &[i as u8], None).unwrap();
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.get(k).unwrap().0, Some(vec![i as u8]), "{k}");
        }
        assert_eq!(s.get("t/v1/sid/8/2"), Ok((None, None)));
        let held: usize = s.shards.iter().map(|m| m.lock().unwrap().len()).sum();
        assert_eq!(held, keys.len());
    }

    #[test]
    fn the_core_binding_table_works_on_it() {
        use tether::pin::{Lifetimes, Pin};
        use tether::table::{Binding, BindingTable, Lookup, SessionId, TableShape};
        let s = ProcessStore::new(1 << 12);
        let table = BindingTable::new(
            "sid",
            TableShape {
                capacity: 64,
                lifetimes: Lifetimes::default(),
            },
        );
        assert_eq!(table.prepare(&s), Ok(table.bucket_count()));
        let id = SessionId([7; 16]);
        let binding = Binding {
            id,
            pin: Pin::new("127.0.0.1:8081", None, 1_000),
            returned: false,
        };
        table.put(&s, &binding, 1_000).unwrap();
        assert!(
            matches!(table.lookup(&s, &id, 1_001), Lookup::Live(b) if b.pin.endpoint.as_ref() == "127.0.0.1:8081")
        );
    }
}
