//! The process-wide `Store`: what Envoy's shared data is to the Wasm build (the binding table's
//! buckets, the per-Envoy secret), kept in this library's memory, which every worker shares.
//!
//! Keys are spread over mutex-guarded shards so workers touching different buckets do not wait
//! for each other; each value carries a CAS number, bumped on every write, with shared data's
//! rules: a write with a number succeeds only if the key still has it, and a write to a key
//! that does not exist always succeeds. The number of keys is capped: the core's tables are a
//! fixed number of buckets, and a write that would pass the cap is refused, never grown into.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use tether::table::{Store, StoreError};

type Fnv = BuildHasherDefault<fnv::FnvHasher>;

const SHARDS: usize = 64;
/// Keys the whole store holds at most: far above any table a configuration can ask for
/// (`max_sessions` buckets of eight bindings), so it is only reached by a defect.
pub const MAX_KEYS: usize = 1 << 22;

/// A key's value, sized exactly: a bucket's bytes change length with every binding added or
/// removed, and a `Vec` would keep the largest capacity it ever had (and a `String` key its
/// spare room), on every key of a table of millions.
struct Entry {
    value: Box<[u8]>,
    cas: u32,
}

type Shard = HashMap<Box<str>, Entry, Fnv>;

pub struct ProcessStore {
    shards: Vec<Mutex<Shard>>,
    max_keys_per_shard: usize,
    hasher: Fnv,
}

impl ProcessStore {
    pub fn new(max_keys: usize) -> ProcessStore {
        ProcessStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: Fnv::default(),
        }
    }

    fn shard(&self, key: &str) -> Option<MutexGuard<'_, Shard>> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
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
        let shard = self.shard(key).ok_or(StoreError::Failed)?;
        Ok(match shard.get(key) {
            Some(e) => (Some(e.value.to_vec()), Some(e.cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut shard = self.shard(key).ok_or(StoreError::Failed)?;
        match shard.get_mut(key) {
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
                if shard.len() >= self.max_keys_per_shard {
                    return Err(StoreError::Failed);
                }
                shard.insert(
                    key.into(),
                    Entry {
                        value: value.into(),
                        cas: 1,
                    },
                );
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
