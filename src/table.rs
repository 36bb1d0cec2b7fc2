//! The binding table: session id → endpoint, with the session's times, kept in Envoy's shared
//! data so that every worker thread sees it.
//!
//! Envoy never frees a shared-data key, even a removed one, so the table is a fixed number of
//! buckets (keys), each holding a few bindings. Clients can create sessions without end; the
//! key space stays the same. A full bucket drops an expired binding first, then the least
//! recently used one; a dropped session is simply load-balanced again.
//!
//! Writers read a bucket with its CAS number and write it back with that number; on a
//! mismatch (another worker wrote in between) they read again, a bounded number of times.

/// Bindings per bucket. Small enough that a lookup copies a few hundred bytes at most.
pub const SLOTS_PER_BUCKET: usize = 8;
/// How many times a writer re-reads a bucket after losing a CAS race before it gives up.
pub const MAX_CAS_RETRIES: usize = 8;
/// Longest endpoint text kept (an IPv6 address with port is at most 47 bytes).
pub const MAX_ENDPOINT_LEN: usize = 64;

const FORMAT_VERSION: u8 = 2;

use crate::token::{SessionId, ID_LEN};

/// Shared data as tether needs it. Inside Envoy it is `proxy_wasm::hostcalls`; in tests an
/// in-memory map that can be made to lose CAS races.
pub trait Store {
    /// The value and its CAS number; `Ok((None, None))` when the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key's CAS number is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the key since we read it.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// What one session is bound to. Times are wall-clock milliseconds since 1970, so that
/// expiry means the same on every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub id: SessionId,
    pub endpoint: String,
    /// The cluster the session was first routed to (with `upstream.cluster_header`).
    pub cluster: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: u64,
}

impl Binding {
    /// Whether the session came back after the request that bound it: a use after its
    /// creation was recorded (the first return always is, see `session`).
    pub fn returned(&self) -> bool {
        self.last_seen_ms > self.created_ms
    }
}

/// A session's lifetimes, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetimes {
    pub absolute_ms: Option<u64>,
    pub idle_ms: Option<u64>,
}

impl Lifetimes {
    pub fn is_expired(&self, b: &Binding, now_ms: u64) -> bool {
        self.is_expired_at(b.created_ms, b.last_seen_ms, now_ms)
    }

    pub fn is_expired_at(&self, created_ms: u64, last_seen_ms: u64, now_ms: u64) -> bool {
        let past = |since: u64, limit: Option<u64>| {
            limit.is_some_and(|limit| now_ms.saturating_sub(since) >= limit)
        };
        past(created_ms, self.absolute_ms) || past(last_seen_ms, self.idle_ms)
    }

    /// How often a binding's last-seen time is written back. Writing on every request would
    /// put a shared-data write (and a CAS race) on the hot path. A quarter of the idle timeout
    /// (60 s at most) means a session may expire up to that much early, never late.
    pub fn touch_interval_ms(&self) -> Option<u64> {
        self.idle_ms.map(|idle| (idle / 4).min(60_000))
    }
}

/// Outcome of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteReport {
    /// CAS races lost before the write went through.
    pub cas_retries: usize,
    /// A live binding was pushed out to make room.
    pub evicted_live: bool,
    /// Bindings in the bucket after the write minus before (new ids in, expired and evicted
    /// ones out): what the write changed in the table's size.
    pub bindings_delta: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Lost the CAS race every time.
    Contended,
    /// The store refused.
    Store,
}

#[derive(Debug, Clone)]
pub struct BindingTable {
    prefix: String,
    buckets: u64,
    lifetimes: Lifetimes,
}

impl BindingTable {
    /// A table for one session name, holding about `capacity` bindings.
    pub fn new(session_name: &str, capacity: usize, lifetimes: Lifetimes) -> Self {
        let buckets = capacity.div_ceil(SLOTS_PER_BUCKET).max(1) as u64;
        BindingTable {
            prefix: format!("tether/v{FORMAT_VERSION}/{session_name}/{buckets}/"),
            buckets,
            lifetimes,
        }
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    pub fn bucket_count(&self) -> u64 {
        self.buckets
    }

    fn bucket_key_at(&self, index: u64) -> String {
        format!("{}{index}", self.prefix)
    }

    fn bucket_key(&self, id: &SessionId) -> String {
        self.bucket_key_at(id.hash() % self.buckets)
    }

    /// Creates every bucket that does not exist yet. Envoy's CAS does not guard the creation of
    /// a key (a write to a missing key always succeeds), so two workers creating the same bucket
    /// at once could lose a binding; creating them all before traffic closes that window.
    /// Returns how many were created.
    pub fn prepare(&self, store: &dyn Store) -> Result<u64, StoreError> {
        let mut created = 0;
        for index in 0..self.buckets {
            let key = self.bucket_key_at(index);
            if let (None, _) = store.get(&key)? {
                store.set(&key, &encode_bucket(&[]), None)?;
                created += 1;
            }
        }
        Ok(created)
    }

    /// The binding of `id`, if it has one and it has not expired.
    pub fn lookup(&self, store: &dyn Store, id: &SessionId, now_ms: u64) -> Lookup {
        let Ok((Some(bytes), _)) = store.get(&self.bucket_key(id)) else {
            return Lookup::Unknown;
        };
        match decode_bucket(&bytes).into_iter().find(|b| b.id == *id) {
            None => Lookup::Unknown,
            Some(b) if self.lifetimes.is_expired(&b, now_ms) => Lookup::Expired(b),
            Some(b) => Lookup::Live(b),
        }
    }

    /// Inserts or replaces `binding` (matched by id).
    pub fn put(
        &self,
        store: &dyn Store,
        binding: &Binding,
        now_ms: u64,
    ) -> Result<WriteReport, WriteError> {
        self.modify(store, &binding.id, now_ms, |entries| {
            entries.retain(|b| b.id != binding.id);
            entries.push(binding.clone());
        })
    }

    /// Forgets the binding of `id` if it still points at `endpoint`.
    pub fn remove(
        &self,
        store: &dyn Store,
        id: &SessionId,
        endpoint: &str,
        now_ms: u64,
    ) -> Result<WriteReport, WriteError> {
        self.modify(store, id, now_ms, |entries| {
            entries.retain(|b| !(b.id == *id && b.endpoint == endpoint));
        })
    }

    /// Records that the session was seen now, if it still has a binding to `endpoint`.
    pub fn touch(
        &self,
        store: &dyn Store,
        id: &SessionId,
        endpoint: &str,
        now_ms: u64,
    ) -> Result<WriteReport, WriteError> {
        self.modify(store, id, now_ms, |entries| {
            if let Some(b) = entries
                .iter_mut()
                .find(|b| b.id == *id && b.endpoint == endpoint)
            {
                b.last_seen_ms = b.last_seen_ms.max(now_ms);
            }
        })
    }

    /// Read-modify-write of the bucket holding `id`, retried on CAS mismatch. After `change`,
    /// expired bindings go first and then the least recently seen, down to the bucket's size.
    fn modify(
        &self,
        store: &dyn Store,
        id: &SessionId,
        now_ms: u64,
        mut change: impl FnMut(&mut Vec<Binding>),
    ) -> Result<WriteReport, WriteError> {
        let key = self.bucket_key(id);
        for attempt in 0..=MAX_CAS_RETRIES {
            let (bytes, cas) = store.get(&key).map_err(|_| WriteError::Store)?;
            let mut entries = bytes.map(|b| decode_bucket(&b)).unwrap_or_default();
            let before = entries.clone();
            change(&mut entries);
            if entries == before {
                return Ok(WriteReport {
                    cas_retries: attempt,
                    evicted_live: false,
                    bindings_delta: 0,
                });
            }
            entries.retain(|b| b.id == *id || !self.lifetimes.is_expired(b, now_ms));
            let mut evicted_live = false;
            while entries.len() > SLOTS_PER_BUCKET {
                let victim = victim(&entries, id);
                match victim {
                    Some(i) => {
                        entries.remove(i);
                        evicted_live = true;
                    }
                    None => break,
                }
            }
            match store.set(&key, &encode_bucket(&entries), cas) {
                Ok(()) => {
                    return Ok(WriteReport {
                        cas_retries: attempt,
                        evicted_live,
                        bindings_delta: len_i64(entries.len()) - len_i64(before.len()),
                    })
                }
                Err(StoreError::CasMismatch) => continue,
                Err(StoreError::Failed) => return Err(WriteError::Store),
            }
        }
        Err(WriteError::Contended)
    }
}

/// At most this many bindings of a bucket are protected from eviction: those that came back
/// after their first request, most recently seen first (a segmented LRU). The other slots take
/// the new sessions, so a flood of one-request clients cycles through them and never reaches
/// the protected ones, and new sessions always find room. 6 of 8: 100 active sessions in a
/// table of 125 buckets put more than 4 in one bucket in about one run out of six (a flood then
/// moved the fifth), more than 6 in about one out of 3 000.
pub const PROTECTED_PER_BUCKET: usize = SLOTS_PER_BUCKET - 2;

/// The binding to evict from an overfull bucket (never `keep`, the one being written): the
/// least recently seen of the unprotected, else of the protected.
fn victim(entries: &[Binding], keep: &SessionId) -> Option<usize> {
    // Protected: came back, and fewer than PROTECTED_PER_BUCKET of those that came back were
    // seen more recently (ties by position). A bucket holds at most 9 here: no sort needed.
    let protected = |i: usize, b: &Binding| {
        b.returned()
            && entries
                .iter()
                .enumerate()
                .filter(|(j, o)| {
                    o.returned()
                        && (o.last_seen_ms > b.last_seen_ms
                            || (o.last_seen_ms == b.last_seen_ms && *j < i))
                })
                .count()
                < PROTECTED_PER_BUCKET
    };
    let oldest = |unprotected: bool| {
        entries
            .iter()
            .enumerate()
            .filter(|(i, b)| b.id != *keep && protected(*i, b) != unprotected)
            .min_by_key(|(_, b)| b.last_seen_ms)
            .map(|(i, _)| i)
    };
    oldest(true).or_else(|| oldest(false))
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Never issued, forgotten, or evicted.
    Unknown,
    Expired(Binding),
    Live(Binding),
}

/// Bucket layout: version, count, then per binding: id (16), created (8, LE), last seen
/// (8, LE), endpoint length (1), endpoint bytes, cluster length (1), cluster bytes.
fn encode_bucket(entries: &[Binding]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * (ID_LEN + 17 + 24));
    out.push(FORMAT_VERSION);
    out.push(entries.len().min(usize::from(u8::MAX)) as u8);
    for b in entries.iter().take(usize::from(u8::MAX)) {
        let endpoint = b.endpoint.as_bytes();
        let endpoint = endpoint.get(..MAX_ENDPOINT_LEN).unwrap_or(endpoint);
        out.extend_from_slice(&b.id.0);
        out.extend_from_slice(&b.created_ms.to_le_bytes());
        out.extend_from_slice(&b.last_seen_ms.to_le_bytes());
        out.push(endpoint.len() as u8);
        out.extend_from_slice(endpoint);
        let cluster = b.cluster.as_deref().unwrap_or("").as_bytes();
        let cluster = cluster.get(..usize::from(u8::MAX)).unwrap_or(cluster);
        out.push(cluster.len() as u8);
        out.extend_from_slice(cluster);
    }
    out
}

/// Reads a bucket; a value that does not parse (another version, damage) reads as empty, so
/// the next write replaces it.
fn decode_bucket(bytes: &[u8]) -> Vec<Binding> {
    let mut r = Reader(bytes);
    let (Some(FORMAT_VERSION), Some(count)) = (r.byte(), r.byte()) else {
        return Vec::new();
    };
    let mut entries = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let Some(b) = decode_binding(&mut r) else {
            return Vec::new();
        };
        entries.push(b);
    }
    entries
}

fn decode_binding(r: &mut Reader<'_>) -> Option<Binding> {
    let id = SessionId(r.take(ID_LEN)?.try_into().ok()?);
    let created_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let last_seen_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let len = usize::from(r.byte()?);
    let endpoint = std::str::from_utf8(r.take(len)?).ok()?.to_string();
    let len = usize::from(r.byte()?);
    let cluster = std::str::from_utf8(r.take(len)?).ok()?;
    let cluster = (!cluster.is_empty()).then(|| cluster.to_string());
    Some(Binding {
        id,
        endpoint,
        cluster,
        created_ms,
        last_seen_ms,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
}

pub mod fake {
    //! An in-memory shared-data store that behaves like Envoy's (a CAS number per key,
    //! creation unguarded) and can be told to lose the next CAS races. For tests and fuzzing:
    //! the module never uses it, and link-time optimisation leaves it out.
    use super::{Store, StoreError};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakeStore {
        pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// The next this many conditional writes fail with a CAS mismatch, as if another
        /// worker had written just before.
        pub force_mismatches: Cell<usize>,
        pub sets: Cell<usize>,
        pub gets: Cell<usize>,
    }

    impl Store for FakeStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.gets.set(self.gets.get() + 1);
            Ok(match self.data.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            self.sets.set(self.sets.get() + 1);
            let mut data = self.data.borrow_mut();
            if let (Some(expected), Some((_, current))) = (cas, data.get(key)) {
                if self.force_mismatches.get() > 0 {
                    self.force_mismatches.set(self.force_mismatches.get() - 1);
                    return Err(StoreError::CasMismatch);
                }
                if expected != *current {
                    return Err(StoreError::CasMismatch);
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            data.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeStore;
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn id(n: u8) -> SessionId {
        SessionId([n; ID_LEN])
    }

    fn binding(n: u8, endpoint: &str, t: u64) -> Binding {
        seen(id(n), endpoint, t, t)
    }

    /// A binding created at `created` and last seen at `last_seen`.
    fn seen(id: SessionId, endpoint: &str, created: u64, last_seen: u64) -> Binding {
        Binding {
            id,
            endpoint: endpoint.into(),
            cluster: None,
            created_ms: created,
            last_seen_ms: last_seen,
        }
    }

    /// Ids that land in one bucket of `table`.
    fn colliding_ids(table: &BindingTable, count: usize) -> Vec<SessionId> {
        let target = id(0).hash() % table.buckets;
        let mut found = Vec::new();
        let mut n: u32 = 0;
        while found.len() < count {
            let mut raw = [0u8; ID_LEN];
            raw[..4].copy_from_slice(&n.to_le_bytes());
            let candidate = SessionId(raw);
            if candidate.hash() % table.buckets == target {
                found.push(candidate);
            }
            n += 1;
            assert!(n < 1_000_000);
        }
        found
    }

    #[test]
    fn bucket_codec_round_trip_and_damage() {
        let with_cluster = Binding {
            cluster: Some("app-v2".into()),
            ..binding(2, "[::1]:80", u64::MAX)
        };
        let entries = vec![binding(1, "127.0.0.1:8081", 5), with_cluster];
        let bytes = encode_bucket(&entries);
        assert_eq!(decode_bucket(&bytes), entries);
        for cut in 0..bytes.len() {
            let partial = decode_bucket(&bytes[..cut]);
            assert!(partial.is_empty() || partial == entries[..partial.len()]);
        }
        assert!(decode_bucket(&[9, 1, 2, 3]).is_empty());
        assert!(decode_bucket(&[]).is_empty());
    }

    #[test]
    fn put_then_lookup() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 100, Lifetimes::default());
        assert_eq!(t.lookup(&store, &id(1), 10), Lookup::Unknown);
        t.put(&store, &binding(1, "127.0.0.1:8081", 10), 10)
            .unwrap();
        assert_eq!(
            t.lookup(&store, &id(1), 10),
            Lookup::Live(binding(1, "127.0.0.1:8081", 10))
        );
        assert_eq!(t.lookup(&store, &id(2), 10), Lookup::Unknown);
        // Replacing keeps one binding per id.
        t.put(&store, &binding(1, "127.0.0.1:8082", 10), 10)
            .unwrap();
        assert_eq!(
            t.lookup(&store, &id(1), 10),
            Lookup::Live(binding(1, "127.0.0.1:8082", 10))
        );
    }

    #[test]
    fn expiry_idle_and_absolute() {
        let store = FakeStore::default();
        let lt = Lifetimes {
            absolute_ms: Some(10_000),
            idle_ms: Some(2_000),
        };
        let t = BindingTable::new("tether", 100, lt);
        t.put(&store, &binding(1, "e", 0), 0).unwrap();
        assert!(matches!(t.lookup(&store, &id(1), 1_999), Lookup::Live(_)));
        assert!(matches!(
            t.lookup(&store, &id(1), 2_000),
            Lookup::Expired(_)
        ));
        // Touched sessions live on until the absolute limit.
        for now in (1_000..10_000).step_by(1_000) {
            t.touch(&store, &id(1), "e", now).unwrap();
            assert!(
                matches!(t.lookup(&store, &id(1), now + 1_500), Lookup::Live(_))
                    || now + 1_500 >= 10_000
            );
        }
        assert!(matches!(
            t.lookup(&store, &id(1), 10_000),
            Lookup::Expired(_)
        ));
    }

    #[test]
    fn remove_forgets_only_that_binding() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 100, Lifetimes::default());
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        t.put(&store, &binding(2, "a", 0), 0).unwrap();
        t.remove(&store, &id(1), "b", 1).unwrap();
        assert!(
            matches!(t.lookup(&store, &id(1), 1), Lookup::Live(_)),
            "moved since: kept"
        );
        let r = t.remove(&store, &id(1), "a", 1).unwrap();
        assert_eq!(r.bindings_delta, -1);
        assert_eq!(t.lookup(&store, &id(1), 1), Lookup::Unknown);
        assert!(matches!(t.lookup(&store, &id(2), 1), Lookup::Live(_)));
    }

    #[test]
    fn touch_only_matches_the_same_endpoint() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 100, Lifetimes::default());
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        t.touch(&store, &id(1), "b", 50).unwrap();
        assert_eq!(
            t.lookup(&store, &id(1), 60),
            Lookup::Live(binding(1, "a", 0))
        );
        let writes = store.sets.get();
        t.touch(&store, &id(9), "a", 50).unwrap();
        assert_eq!(
            store.sets.get(),
            writes,
            "touching an unknown id writes nothing"
        );
    }

    #[test]
    fn full_bucket_drops_expired_first_then_least_recent() {
        let store = FakeStore::default();
        let lt = Lifetimes {
            absolute_ms: None,
            idle_ms: Some(1_000),
        };
        let t = BindingTable::new("tether", 1000, lt);
        let ids = colliding_ids(&t, SLOTS_PER_BUCKET + 2);
        let put = |i: usize, t_ms: u64| {
            t.put(&store, &seen(ids[i], &format!("e{i}"), t_ms, t_ms), t_ms)
                .unwrap()
        };
        // Slot 0 is old enough to be expired at t=5000; the others are fresh.
        let mut held = put(0, 0).bindings_delta;
        assert_eq!(held, 1, "a new id adds a binding");
        for i in 1..SLOTS_PER_BUCKET {
            held += put(i, 4_500 + i as u64).bindings_delta;
        }
        assert_eq!(put(1, 4_501).bindings_delta, 0, "rewriting an id adds none");
        let r = put(SLOTS_PER_BUCKET, 5_000);
        held += r.bindings_delta;
        assert!(!r.evicted_live, "an expired binding made the room");
        assert_eq!(t.lookup(&store, &ids[0], 5_000), Lookup::Unknown);
        // Now full of live ones: the least recently seen (slot 1) goes.
        let r = put(SLOTS_PER_BUCKET + 1, 5_100);
        assert!(r.evicted_live);
        assert_eq!(r.bindings_delta, 0, "one in, one evicted");
        // The deltas add up to what the bucket holds: a full one.
        assert_eq!(held, SLOTS_PER_BUCKET as i64);
        assert_eq!(t.lookup(&store, &ids[1], 5_100), Lookup::Unknown);
        for (i, live) in ids.iter().enumerate().skip(2) {
            assert!(
                matches!(t.lookup(&store, live, 5_100), Lookup::Live(_)),
                "slot {i}"
            );
        }
    }

    #[test]
    fn sessions_that_came_back_are_protected_from_new_ones_up_to_a_limit() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 1000, Lifetimes::default());
        let ids = colliding_ids(&t, SLOTS_PER_BUCKET + 6);
        let put = |i: usize, created: u64, last: u64| {
            t.put(&store, &seen(ids[i], &format!("e{i}"), created, last), last)
                .unwrap()
        };
        let live = |i: usize| matches!(t.lookup(&store, &ids[i], 10_000), Lookup::Live(_));
        // A full bucket of sessions that came back (seen after their creation).
        for i in 0..SLOTS_PER_BUCKET {
            put(i, 0, 100 + i as u64);
        }
        // Six one-request clients, each more recent than every one of them.
        for j in 0..6 {
            let r = put(SLOTS_PER_BUCKET + j, 1_000 + j as u64, 1_000 + j as u64);
            assert!(r.evicted_live);
            assert!(
                live(SLOTS_PER_BUCKET + j),
                "a new session always finds room"
            );
        }
        // The PROTECTED_PER_BUCKET most recent of those that came back stayed (6: ids 2-7);
        // the others made room.
        let first_kept = SLOTS_PER_BUCKET - PROTECTED_PER_BUCKET;
        for i in 0..SLOTS_PER_BUCKET {
            assert_eq!(live(i), i >= first_kept, "returned binding {i}");
        }
        // The newcomers share the other 2 slots: the 2 most recent of them are held.
        let held: Vec<bool> = (0..6).map(|j| live(SLOTS_PER_BUCKET + j)).collect();
        assert_eq!(held, [false, false, false, false, true, true]);
    }

    #[test]
    fn key_space_is_bounded_whatever_the_sessions() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 1_000, Lifetimes::default());
        t.prepare(&store).unwrap();
        let keys_after_prepare = store.data.borrow().len();
        assert_eq!(keys_after_prepare as u64, t.bucket_count());
        let mut e = crate::token::SystemEntropy;
        for n in 0..20_000u64 {
            let id = SessionId::generate(&mut e).unwrap();
            let b = Binding {
                id,
                endpoint: "127.0.0.1:1".into(),
                cluster: Some("app".into()),
                created_ms: n,
                last_seen_ms: n,
            };
            t.put(&store, &b, n).unwrap();
        }
        assert_eq!(store.data.borrow().len(), keys_after_prepare);
        let live: usize = store
            .data
            .borrow()
            .values()
            .map(|(v, _)| decode_bucket(v).len())
            .sum();
        assert!(live <= t.bucket_count() as usize * SLOTS_PER_BUCKET);
        assert!(
            live >= 900,
            "the table fills up to about its capacity, got {live}"
        );
    }

    #[test]
    fn prepare_is_idempotent_and_keeps_bindings() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 64, Lifetimes::default());
        assert_eq!(t.prepare(&store).unwrap(), 8);
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        assert_eq!(t.prepare(&store).unwrap(), 0);
        assert!(matches!(t.lookup(&store, &id(1), 0), Lookup::Live(_)));
    }

    #[test]
    fn cas_conflicts_are_retried_then_given_up() {
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 100, Lifetimes::default());
        t.prepare(&store).unwrap();
        store.force_mismatches.set(3);
        let r = t.put(&store, &binding(1, "a", 0), 0).unwrap();
        assert_eq!(r.cas_retries, 3);
        assert!(matches!(t.lookup(&store, &id(1), 0), Lookup::Live(_)));

        store.force_mismatches.set(MAX_CAS_RETRIES + 1);
        assert_eq!(
            t.put(&store, &binding(2, "b", 0), 0),
            Err(WriteError::Contended)
        );
        assert_eq!(t.lookup(&store, &id(2), 0), Lookup::Unknown);
        // The earlier binding survived the failed attempts.
        assert!(matches!(t.lookup(&store, &id(1), 0), Lookup::Live(_)));
    }

    #[test]
    fn interleaved_writers_lose_nothing() {
        // Two writers read the same bucket, then both write: the second must notice and merge.
        let store = FakeStore::default();
        let t = BindingTable::new("tether", 8, Lifetimes::default()); // one bucket
        t.prepare(&store).unwrap();
        let key = t.bucket_key(&id(1));
        let (_, stale_cas) = store.get(&key).unwrap();
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        // A writer holding the stale CAS is refused...
        assert_eq!(
            store.set(&key, &encode_bucket(&[binding(2, "b", 0)]), stale_cas),
            Err(StoreError::CasMismatch)
        );
        // ...and the table's own writer re-reads and keeps both.
        t.put(&store, &binding(2, "b", 0), 0).unwrap();
        assert!(matches!(t.lookup(&store, &id(1), 0), Lookup::Live(_)));
        assert!(matches!(t.lookup(&store, &id(2), 0), Lookup::Live(_)));
    }

    #[test]
    fn touch_interval() {
        assert_eq!(
            Lifetimes {
                absolute_ms: None,
                idle_ms: None
            }
            .touch_interval_ms(),
            None
        );
        assert_eq!(
            Lifetimes {
                absolute_ms: None,
                idle_ms: Some(2_000)
            }
            .touch_interval_ms(),
            Some(500)
        );
        assert_eq!(
            Lifetimes {
                absolute_ms: None,
                idle_ms: Some(40_000)
            }
            .touch_interval_ms(),
            Some(10_000)
        );
        assert_eq!(
            Lifetimes {
                absolute_ms: None,
                idle_ms: Some(3_600_000)
            }
            .touch_interval_ms(),
            Some(60_000)
        );
    }
}
