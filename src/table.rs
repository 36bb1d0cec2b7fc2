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
/// Longest endpoint kept (an IPv6 address with its port is at most 47 bytes); a longer one is
/// refused, never cut.
pub const MAX_ENDPOINT_LEN: usize = 64;
/// Longest cluster name kept; a longer one is refused.
pub const MAX_CLUSTER_LEN: usize = 255;

const FORMAT_VERSION: u8 = 3;

use crate::pin::{Lifetimes, Pin};
use std::fmt;
use std::hash::Hasher;
use std::rc::Rc;

/// Bytes of a table id.
pub const ID_LEN: usize = 16;

/// A binding's key in the table: the keyed hash of a learned id or client address
/// (`secret::IdHasher`), never shown to clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; ID_LEN]);

impl fmt::Debug for SessionId {
    // A short prefix only: enough to follow a session in a log, not to reconstruct anything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, ..] = self.0;
        write!(f, "{a:02x}{b:02x}{c:02x}…")
    }
}

impl SessionId {
    /// Which bucket of a table of `buckets` holds this id. Ids are the output of a keyed PRF,
    /// so their bits are uniform already.
    fn bucket(&self, buckets: u64) -> u64 {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(self.0.iter()) {
            *w = *b;
        }
        u64::from_le_bytes(word) % buckets.max(1)
    }
}

/// Shared data as tether needs it. Inside Envoy it is `proxy_wasm::hostcalls`; in tests an
/// in-memory map that can be made to lose CAS races (`testing::FakeStore`).
pub trait Store {
    /// The value and its CAS number; `Ok((None, None))` when the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key's CAS number is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
    /// Lends the value (`None` when the key does not exist) to `f`, for a read that keeps none
    /// of it: a store that holds values in its own memory lends them without a copy.
    fn read(&self, key: &str, f: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        let (value, _) = self.get(key)?;
        f(value.as_deref());
        Ok(())
    }
    /// This worker's memory (`Recent`) of when the record of `id` in the table `table` was
    /// last known fresh. A store whose reads cost little keeps none.
    fn recall(&self, _table: u64, _id: &SessionId) -> Option<u64> {
        None
    }
    /// Remembers (`Some`) or forgets (`None`) when the record of `id` was last known fresh.
    fn remember(&self, _table: u64, _id: &SessionId, _seen_ms: Option<u64>) {}
}

/// One worker's memory of when it last read or wrote a session's record, so that a session
/// coming back often skips the shared-data read (a host call that copies a bucket) while its
/// record is known to be fresh. A lower bound only: another worker may have seen the session
/// since, never less recently. Fixed size, one entry per slot: a flood only costs reads.
pub struct Recent {
    slots: Vec<Option<(u64, SessionId, u64)>>,
}

impl Recent {
    pub fn new(slots: usize) -> Recent {
        Recent {
            slots: vec![None; slots.max(1)],
        }
    }

    fn slot(&self, table: u64, id: &SessionId) -> usize {
        // Ids are keyed-PRF output: uniform bits, and no client can aim at a slot.
        let index = id.bucket(u64::MAX) ^ table;
        usize::try_from(index % self.slots.len() as u64).unwrap_or_default()
    }

    pub fn recall(&self, table: u64, id: &SessionId) -> Option<u64> {
        match self.slots.get(self.slot(table, id)) {
            Some(Some((t, i, seen))) if *t == table && i == id => Some(*seen),
            _ => None,
        }
    }

    pub fn remember(&mut self, table: u64, id: &SessionId, seen_ms: Option<u64>) {
        let index = self.slot(table, id);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        match seen_ms {
            Some(seen) => *slot = Some((table, *id, seen)),
            // Forgetting leaves another session's entry in the slot alone.
            None if matches!(slot, Some((t, i, _)) if *t == table && i == id) => *slot = None,
            None => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone wrote the key since we read it.
    CasMismatch,
    /// The host refused for another reason.
    Failed,
}

/// The digits of `u64::MAX`.
const MAX_DECIMAL_DIGITS: usize = 20;

/// Appends `n` in decimal, as `Display` writes it.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; MAX_DECIMAL_DIGITS];
    let mut len = 0;
    for d in digits.iter_mut() {
        *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits.iter().take(len).rev().map(|d| char::from(*d)));
}

/// What one session is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub id: SessionId,
    pub pin: Pin,
    /// The session came back after the request that bound it. Recorded as a flag, not read
    /// from the times: a return within the same millisecond as the first request counts too.
    pub returned: bool,
}

/// Outcome of a write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteReport {
    /// CAS races lost before the write went through.
    pub cas_retries: usize,
    /// Live bindings pushed out to make room.
    pub evicted_live: usize,
    /// Bindings in the bucket after the write minus before (new ids in, expired and evicted
    /// ones out): what the write changed in the table's size.
    pub bindings_delta: i64,
    /// The same change per endpoint, only those whose count moved (the per-endpoint gauge):
    /// a binding evicted or expired counts against its own endpoint, not the one written.
    pub endpoint_deltas: Vec<(Rc<str>, i64)>,
}

impl WriteReport {
    pub fn add(&mut self, other: &WriteReport) {
        self.cas_retries += other.cas_retries;
        self.evicted_live += other.evicted_live;
        self.bindings_delta += other.bindings_delta;
        for (endpoint, delta) in &other.endpoint_deltas {
            add_endpoint_delta(&mut self.endpoint_deltas, endpoint, *delta);
        }
    }
}

fn add_endpoint_delta(deltas: &mut Vec<(Rc<str>, i64)>, endpoint: &Rc<str>, delta: i64) {
    match deltas.iter_mut().find(|(e, _)| e == endpoint) {
        Some((_, d)) => *d += delta,
        None => deltas.push((endpoint.clone(), delta)),
    }
    deltas.retain(|(_, d)| *d != 0);
}

/// How many bindings each endpoint gained (or lost) from `before` to `after`. A bucket holds a
/// handful of bindings, and most writes (a touch, a rewrite of the same endpoint) change no
/// endpoint's count and allocate nothing.
fn endpoint_deltas(before: &[Binding], after: &[Binding]) -> Vec<(Rc<str>, i64)> {
    let mut deltas = Vec::new();
    let count = |entries: &[Binding], endpoint: &str| {
        len_i64(
            entries
                .iter()
                .filter(|b| &*b.pin.endpoint == endpoint)
                .count(),
        )
    };
    for b in before.iter().chain(after) {
        let endpoint = &b.pin.endpoint;
        if deltas.iter().any(|(e, _): &(Rc<str>, i64)| e == endpoint) {
            continue;
        }
        let delta = count(after, endpoint) - count(before, endpoint);
        if delta != 0 {
            deltas.push((endpoint.clone(), delta));
        }
    }
    deltas
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Lost the CAS race every time.
    Contended,
    /// The store refused.
    Store,
    /// The endpoint or cluster name is longer than a binding holds.
    TooLong,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteError::Contended => "contended",
            WriteError::Store => "store",
            WriteError::TooLong => "too_long",
        })
    }
}

/// The settings a table is made of. Two policies that name the same table (the same session
/// name) must agree on them, or each would evict and expire the other's bindings by its own
/// rules (`config` refuses such a configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    pub capacity: usize,
    pub lifetimes: Lifetimes,
}

#[derive(Debug, Clone)]
pub struct BindingTable {
    prefix: String,
    buckets: u64,
    lifetimes: Lifetimes,
    /// The table's name in a worker's `Recent` memory.
    tag: u64,
}

impl BindingTable {
    /// A table for one session name, holding about `shape.capacity` bindings.
    pub fn new(session_name: &str, shape: TableShape) -> Self {
        let buckets = shape.capacity.div_ceil(SLOTS_PER_BUCKET).max(1) as u64;
        let prefix = format!("tether/v{FORMAT_VERSION}/{session_name}/{buckets}/");
        let mut tag = fnv::FnvHasher::default();
        tag.write(prefix.as_bytes());
        BindingTable {
            tag: tag.finish(),
            prefix,
            buckets,
            lifetimes: shape.lifetimes,
        }
    }

    /// When this worker last knew the record of `id` fresh, if it remembers.
    pub fn recall(&self, store: &dyn Store, id: &SessionId) -> Option<u64> {
        store.recall(self.tag, id)
    }

    /// This worker now knows the record of `id` fresh at `seen_ms` (`None`: gone).
    pub fn remember(&self, store: &dyn Store, id: &SessionId, seen_ms: Option<u64>) {
        store.remember(self.tag, id, seen_ms);
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    pub fn bucket_count(&self) -> u64 {
        self.buckets
    }

    fn bucket_key_at(&self, index: u64) -> String {
        // Made on every lookup and write: one allocation of its final size, and no formatter
        // (`format!` grew the string and went through `fmt` for the number).
        let mut key = String::with_capacity(self.prefix.len() + MAX_DECIMAL_DIGITS);
        key.push_str(&self.prefix);
        push_decimal(&mut key, index);
        key
    }

    fn bucket_key(&self, id: &SessionId) -> String {
        self.bucket_key_at(id.bucket(self.buckets))
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
        let mut found = None;
        let read = store.read(&self.bucket_key(id), &mut |bytes| {
            found = bytes.and_then(|b| find_in_bucket(b, id));
        });
        match read.ok().and(found) {
            None => Lookup::Unknown,
            Some(b) if self.lifetimes.is_expired(&b.pin, now_ms) => Lookup::Expired(b),
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
        if binding.pin.endpoint.len() > MAX_ENDPOINT_LEN
            || binding.pin.cluster.as_ref().map_or(0, |c| c.len()) > MAX_CLUSTER_LEN
        {
            return Err(WriteError::TooLong);
        }
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
            entries.retain(|b| !(b.id == *id && &*b.pin.endpoint == endpoint));
        })
    }

    /// Records that the session came back now, if it still has a binding to `endpoint`.
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
                .find(|b| b.id == *id && &*b.pin.endpoint == endpoint)
            {
                b.pin = b.pin.seen(now_ms);
                b.returned = true;
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
                    ..WriteReport::default()
                });
            }
            entries.retain(|b| b.id == *id || !self.lifetimes.is_expired(&b.pin, now_ms));
            let mut evicted_live = 0;
            while entries.len() > SLOTS_PER_BUCKET {
                match victim(&entries, id) {
                    Some(i) => {
                        entries.remove(i);
                        evicted_live += 1;
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
                        endpoint_deltas: endpoint_deltas(&before, &entries),
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
/// the protected ones, and new sessions always find room. Two unprotected slots rather than
/// one keep a bucket's newcomers from evicting each other at once; six protected rather than
/// four make it rare for a table's active sessions to crowd one bucket past its protection.
pub const PROTECTED_PER_BUCKET: usize = SLOTS_PER_BUCKET - 2;

/// The binding to evict from an overfull bucket (never `keep`, the one being written): the
/// least recently seen of the unprotected, else of the protected.
fn victim(entries: &[Binding], keep: &SessionId) -> Option<usize> {
    // Protected: came back, and fewer than PROTECTED_PER_BUCKET of those that came back were
    // seen more recently (ties by position). A bucket holds at most 9 here: no sort needed.
    let protected = |i: usize, b: &Binding| {
        b.returned
            && entries
                .iter()
                .enumerate()
                .filter(|(j, o)| {
                    o.returned
                        && (o.pin.last_seen_ms > b.pin.last_seen_ms
                            || (o.pin.last_seen_ms == b.pin.last_seen_ms && *j < i))
                })
                .count()
                < PROTECTED_PER_BUCKET
    };
    let oldest = |unprotected: bool| {
        entries
            .iter()
            .enumerate()
            .filter(|(i, b)| b.id != *keep && protected(*i, b) != unprotected)
            .min_by_key(|(_, b)| b.pin.last_seen_ms)
            .map(|(i, _)| i)
    };
    oldest(true).or_else(|| oldest(false))
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Never bound, forgotten, or evicted.
    Unknown,
    Expired(Binding),
    Live(Binding),
}

const RETURNED: u8 = 1;

/// Bucket layout: version, count, then per binding: id (16), flags (1: bit 0 returned),
/// created (8, LE), last seen (8, LE), endpoint length (1), endpoint bytes, cluster length (1),
/// cluster bytes. `put` refuses what does not fit.
fn encode_bucket(entries: &[Binding]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * (ID_LEN + 19 + 24));
    out.push(FORMAT_VERSION);
    out.push(entries.len().min(usize::from(u8::MAX)) as u8);
    for b in entries.iter().take(usize::from(u8::MAX)) {
        out.extend_from_slice(&b.id.0);
        out.push(if b.returned { RETURNED } else { 0 });
        out.extend_from_slice(&b.pin.created_ms.to_le_bytes());
        out.extend_from_slice(&b.pin.last_seen_ms.to_le_bytes());
        for text in [&*b.pin.endpoint, b.pin.cluster.as_deref().unwrap_or("")] {
            let bytes = text.as_bytes();
            let bytes = bytes.get(..usize::from(u8::MAX)).unwrap_or(bytes);
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
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

/// The binding of `id` in a bucket, as `decode_bucket` followed by a search would find it, but
/// decoding (and allocating for) that one only: a lookup wants one of up to eight. The others
/// are still read through, so a bucket that does not parse reads as empty here too.
fn find_in_bucket(bytes: &[u8], id: &SessionId) -> Option<Binding> {
    let mut r = Reader(bytes);
    let (Some(FORMAT_VERSION), Some(count)) = (r.byte(), r.byte()) else {
        return None;
    };
    let mut found = None;
    for _ in 0..count {
        if found.is_none() && r.0.get(..ID_LEN) == Some(&id.0[..]) {
            found = Some(decode_binding(&mut r)?);
        } else {
            skip_binding(&mut r)?;
        }
    }
    found
}

/// Reads past one binding, refusing what `decode_binding` refuses.
fn skip_binding(r: &mut Reader<'_>) -> Option<()> {
    r.take(ID_LEN + 1 + 8 + 8)?;
    for _ in 0..2 {
        let len = usize::from(r.byte()?);
        std::str::from_utf8(r.take(len)?).ok()?;
    }
    Some(())
}

fn decode_binding(r: &mut Reader<'_>) -> Option<Binding> {
    let id = SessionId(r.take(ID_LEN)?.try_into().ok()?);
    let flags = r.byte()?;
    let created_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let last_seen_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let len = usize::from(r.byte()?);
    let endpoint = std::str::from_utf8(r.take(len)?).ok()?.into();
    let len = usize::from(r.byte()?);
    let cluster = std::str::from_utf8(r.take(len)?).ok()?;
    let cluster = (!cluster.is_empty()).then(|| cluster.into());
    Some(Binding {
        id,
        pin: Pin {
            endpoint,
            cluster,
            created_ms,
            last_seen_ms,
        },
        returned: flags & RETURNED != 0,
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

#[cfg(test)]
mod tests {
    #[test]
    fn bucket_indexes_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 1_000_003, u64::MAX] {
            let mut key = String::from("p/");
            super::push_decimal(&mut key, n);
            assert_eq!(key, format!("p/{n}"));
        }
    }

    use super::*;
    use crate::testing::FakeStore;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn id(n: u8) -> SessionId {
        SessionId([n; ID_LEN])
    }

    #[test]
    fn a_workers_memory_is_fixed_in_size_and_never_confuses_sessions() {
        let mut r = Recent::new(4);
        r.remember(1, &id(1), Some(10));
        assert_eq!(r.recall(1, &id(1)), Some(10));
        assert_eq!(
            r.recall(2, &id(1)),
            None,
            "another table's session of the same id"
        );
        assert_eq!(r.recall(1, &id(2)), None);
        // Many more sessions than slots: each remembered one is itself or forgotten, never
        // another's time.
        for n in 0..200u8 {
            r.remember(1, &id(n), Some(u64::from(n) + 1_000));
        }
        assert_eq!(r.slots.len(), 4);
        let kept: Vec<u8> = (0..200u8)
            .filter(|n| r.recall(1, &id(*n)).is_some())
            .collect();
        assert!(!kept.is_empty() && kept.len() <= 4, "{kept:?}");
        for n in kept {
            assert_eq!(r.recall(1, &id(n)), Some(u64::from(n) + 1_000));
            // Forgetting another session that shares the slot leaves this one alone.
            r.remember(9, &id(n), None);
            assert!(r.recall(1, &id(n)).is_some());
            r.remember(1, &id(n), None);
            assert_eq!(r.recall(1, &id(n)), None);
        }
    }

    fn table(capacity: usize, lifetimes: Lifetimes) -> BindingTable {
        BindingTable::new(
            "tether",
            TableShape {
                capacity,
                lifetimes,
            },
        )
    }

    /// A binding created at `created` and last seen at `last_seen`, not yet returned.
    fn seen(id: SessionId, endpoint: &str, created: u64, last_seen: u64) -> Binding {
        Binding {
            id,
            pin: Pin {
                endpoint: endpoint.into(),
                cluster: None,
                created_ms: created,
                last_seen_ms: last_seen,
            },
            returned: false,
        }
    }

    fn binding(n: u8, endpoint: &str, t: u64) -> Binding {
        seen(id(n), endpoint, t, t)
    }

    fn live(t: &BindingTable, store: &FakeStore, id: &SessionId, now: u64) -> bool {
        matches!(t.lookup(store, id, now), Lookup::Live(_))
    }

    /// Ids that land in one bucket of `table`.
    fn colliding_ids(table: &BindingTable, count: usize) -> Vec<SessionId> {
        let target = id(0).bucket(table.buckets);
        let mut found = Vec::new();
        let mut n: u32 = 0;
        while found.len() < count {
            let mut raw = [0u8; ID_LEN];
            raw[..4].copy_from_slice(&n.to_le_bytes());
            let candidate = SessionId(raw);
            if candidate.bucket(table.buckets) == target {
                found.push(candidate);
            }
            n += 1;
            assert!(n < 1_000_000);
        }
        found
    }

    #[test]
    fn bucket_codec_round_trip_and_damage() {
        let mut with_cluster = binding(2, "[::1]:80", u64::MAX);
        with_cluster.pin.cluster = Some("app-v2".into());
        with_cluster.returned = true;
        let entries = vec![binding(1, "127.0.0.1:8081", 5), with_cluster];
        let bytes = encode_bucket(&entries);
        assert_eq!(decode_bucket(&bytes), entries);
        for cut in 0..bytes.len() {
            let partial = decode_bucket(&bytes[..cut]);
            assert!(partial.is_empty() || partial == entries[..partial.len()]);
        }
        assert!(decode_bucket(&[9, 1, 2, 3]).is_empty());
        assert!(decode_bucket(&[]).is_empty());
        assert!(
            decode_bucket(&[2, 0]).is_empty(),
            "an older format reads as empty"
        );
    }

    #[test]
    fn a_lookup_finds_in_a_bucket_what_decoding_it_whole_finds() {
        let mut entries: Vec<Binding> = (1..=8)
            .map(|n| binding(n, &format!("10.0.0.{n}:8080"), u64::from(n)))
            .collect();
        entries[3].pin.cluster = Some("canary".into());
        entries[5].returned = true;
        let whole = encode_bucket(&entries);
        let mut damaged: Vec<Vec<u8>> = (0..whole.len()).map(|cut| whole[..cut].to_vec()).collect();
        for at in 0..whole.len() {
            for byte in [0x00, 0x07, 0xff] {
                let mut b = whole.clone();
                b[at] = byte;
                damaged.push(b);
            }
        }
        damaged.push(whole.clone());
        damaged.push(encode_bucket(&[]));
        for bytes in &damaged {
            let decoded = decode_bucket(bytes);
            for n in 0..=9 {
                let wanted = id(n);
                assert_eq!(
                    find_in_bucket(bytes, &wanted),
                    decoded.iter().find(|b| b.id == wanted).cloned(),
                    "id {n} in {bytes:?}"
                );
            }
        }
    }

    #[test]
    fn put_then_lookup() {
        let store = FakeStore::default();
        let t = table(100, Lifetimes::default());
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
    fn an_endpoint_or_cluster_too_long_is_refused_not_cut() {
        let store = FakeStore::default();
        let t = table(100, Lifetimes::default());
        let long = format!("{}:1", "a".repeat(MAX_ENDPOINT_LEN));
        assert_eq!(
            t.put(&store, &binding(1, &long, 0), 0),
            Err(WriteError::TooLong)
        );
        let mut b = binding(2, "127.0.0.1:1", 0);
        b.pin.cluster = Some("c".repeat(MAX_CLUSTER_LEN + 1).into());
        assert_eq!(t.put(&store, &b, 0), Err(WriteError::TooLong));
        assert_eq!(store.sets.get(), 0, "nothing written");
        let fits = "a".repeat(MAX_ENDPOINT_LEN);
        t.put(&store, &binding(3, &fits, 0), 0).unwrap();
        assert_eq!(
            t.lookup(&store, &id(3), 0),
            Lookup::Live(binding(3, &fits, 0))
        );
    }

    #[test]
    fn expiry_idle_and_absolute() {
        let store = FakeStore::default();
        let lt = Lifetimes {
            absolute_ms: Some(10_000),
            idle_ms: Some(2_000),
        };
        let t = table(100, lt);
        t.put(&store, &binding(1, "e", 0), 0).unwrap();
        assert!(live(&t, &store, &id(1), 1_999));
        assert!(matches!(
            t.lookup(&store, &id(1), 2_000),
            Lookup::Expired(_)
        ));
        // Touched sessions live on until the absolute limit.
        for now in (1_000..10_000).step_by(1_000) {
            t.touch(&store, &id(1), "e", now).unwrap();
            assert!(live(&t, &store, &id(1), now + 1_500) || now + 1_500 >= 10_000);
        }
        assert!(matches!(
            t.lookup(&store, &id(1), 10_000),
            Lookup::Expired(_)
        ));
    }

    #[test]
    fn remove_forgets_only_that_binding() {
        let store = FakeStore::default();
        let t = table(100, Lifetimes::default());
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        t.put(&store, &binding(2, "a", 0), 0).unwrap();
        t.remove(&store, &id(1), "b", 1).unwrap();
        assert!(live(&t, &store, &id(1), 1), "moved since: kept");
        let r = t.remove(&store, &id(1), "a", 1).unwrap();
        assert_eq!(r.bindings_delta, -1);
        assert_eq!(t.lookup(&store, &id(1), 1), Lookup::Unknown);
        assert!(live(&t, &store, &id(2), 1));
    }

    #[test]
    fn touch_marks_the_return_and_only_matches_the_same_endpoint() {
        let store = FakeStore::default();
        let t = table(100, Lifetimes::default());
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        t.touch(&store, &id(1), "b", 50).unwrap();
        assert_eq!(
            t.lookup(&store, &id(1), 60),
            Lookup::Live(binding(1, "a", 0))
        );
        t.touch(&store, &id(1), "a", 0).unwrap();
        let Lookup::Live(b) = t.lookup(&store, &id(1), 0) else {
            panic!("bound")
        };
        assert!(b.returned, "a return in the same millisecond is a return");
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
        let t = table(1000, lt);
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
        assert_eq!(r.evicted_live, 0, "an expired binding made the room");
        assert_eq!(t.lookup(&store, &ids[0], 5_000), Lookup::Unknown);
        // Now full of live ones: the least recently seen (slot 1) goes.
        let r = put(SLOTS_PER_BUCKET + 1, 5_100);
        assert_eq!(r.evicted_live, 1);
        assert_eq!(r.bindings_delta, 0, "one in, one evicted");
        // The deltas add up to what the bucket holds: a full one.
        assert_eq!(held, SLOTS_PER_BUCKET as i64);
        assert_eq!(t.lookup(&store, &ids[1], 5_100), Lookup::Unknown);
        for (i, id) in ids.iter().enumerate().skip(2) {
            assert!(live(&t, &store, id, 5_100), "slot {i}");
        }
    }

    #[test]
    fn each_endpoint_gains_and_loses_its_own_bindings() {
        let store = FakeStore::default();
        let lt = Lifetimes {
            absolute_ms: None,
            idle_ms: Some(4_800),
        };
        let t = table(1000, lt);
        let ids = colliding_ids(&t, SLOTS_PER_BUCKET + 2);
        let put = |i: usize, endpoint: &str, t_ms: u64| {
            t.put(&store, &seen(ids[i], endpoint, t_ms, t_ms), t_ms)
                .unwrap()
                .endpoint_deltas
        };
        let d = |pairs: &[(&str, i64)]| -> Vec<(Rc<str>, i64)> {
            pairs.iter().map(|(e, n)| (Rc::from(*e), *n)).collect()
        };
        // Slot 0 on A expires by t=5000; the rest of the bucket fills on B.
        assert_eq!(put(0, "A", 0), d(&[("A", 1)]));
        for i in 1..SLOTS_PER_BUCKET {
            assert_eq!(put(i, "B", 4_500), d(&[("B", 1)]));
        }
        assert_eq!(put(1, "B", 4_600), d(&[]), "a rewrite on the same endpoint");
        assert_eq!(put(1, "C", 4_700), d(&[("B", -1), ("C", 1)]), "moved");
        // A new id on C: A's expired binding made the room, and A lost it.
        assert_eq!(put(SLOTS_PER_BUCKET, "C", 5_000), d(&[("A", -1), ("C", 1)]));
        // Full of live ones: the least recently seen (a B) is evicted for a new one on A.
        let r = t
            .put(
                &store,
                &seen(ids[SLOTS_PER_BUCKET + 1], "A", 5_100, 5_100),
                5_100,
            )
            .unwrap();
        assert_eq!(r.evicted_live, 1);
        assert_eq!(r.endpoint_deltas, d(&[("B", -1), ("A", 1)]));
        let mut sum = WriteReport::default();
        sum.add(&r);
        sum.add(
            &t.remove(&store, &ids[SLOTS_PER_BUCKET + 1], "A", 5_100)
                .unwrap(),
        );
        assert_eq!(sum.endpoint_deltas, d(&[("B", -1)]), "A's +1 and -1 cancel");
    }

    #[test]
    fn sessions_that_came_back_are_protected_from_new_ones_up_to_a_limit() {
        let store = FakeStore::default();
        let t = table(1000, Lifetimes::default());
        let ids = colliding_ids(&t, SLOTS_PER_BUCKET + 6);
        let is_live = |i: usize| live(&t, &store, &ids[i], 10_000);
        // A full bucket of sessions that came back.
        for (i, id) in ids.iter().enumerate().take(SLOTS_PER_BUCKET) {
            let mut b = seen(*id, &format!("e{i}"), 0, 100 + i as u64);
            b.returned = true;
            t.put(&store, &b, 100).unwrap();
        }
        // Six one-request clients, each more recent than every one of them.
        for j in 0..6 {
            let i = SLOTS_PER_BUCKET + j;
            let now = 1_000 + j as u64;
            let r = t.put(&store, &seen(ids[i], "n", now, now), now).unwrap();
            assert_eq!(r.evicted_live, 1);
            assert!(is_live(i), "a new session always finds room");
        }
        // The PROTECTED_PER_BUCKET most recent of those that came back stayed (ids 2-7); the
        // others made room.
        let first_kept = SLOTS_PER_BUCKET - PROTECTED_PER_BUCKET;
        for i in 0..SLOTS_PER_BUCKET {
            assert_eq!(is_live(i), i >= first_kept, "returned binding {i}");
        }
        // The newcomers share the other 2 slots: the 2 most recent of them are held.
        let held: Vec<bool> = (0..6).map(|j| is_live(SLOTS_PER_BUCKET + j)).collect();
        assert_eq!(held, [false, false, false, false, true, true]);
    }

    /// Issue #12, defect 6: a session whose first return came in the same millisecond as its
    /// first request (last seen == created) was never marked as returned, and a flood pushed it
    /// out. The return is a flag now, whatever the clock says.
    #[test]
    fn a_return_in_the_same_millisecond_protects_the_session_from_a_flood() {
        let store = FakeStore::default();
        let t = table(1000, Lifetimes::default());
        let ids = colliding_ids(&t, PROTECTED_PER_BUCKET + 50);
        let (active, flood) = ids.split_at(PROTECTED_PER_BUCKET);
        for id in active {
            t.put(&store, &seen(*id, "a", 7, 7), 7).unwrap();
            t.touch(&store, id, "a", 7).unwrap();
        }
        for (n, id) in flood.iter().enumerate() {
            let now = 8 + n as u64;
            t.put(&store, &seen(*id, "f", now, now), now).unwrap();
        }
        for id in active {
            assert!(live(&t, &store, id, 100), "{id:?} pushed out by a flood");
        }
    }

    #[test]
    fn key_space_is_bounded_whatever_the_sessions() {
        let store = FakeStore::default();
        let t = table(1_000, Lifetimes::default());
        t.prepare(&store).unwrap();
        let keys_after_prepare = store.data.borrow().len();
        assert_eq!(keys_after_prepare as u64, t.bucket_count());
        let hasher = crate::secret::IdHasher::new(&[4; 32]);
        for n in 0..20_000u64 {
            let mut b = seen(hasher.id(&n.to_le_bytes()), "127.0.0.1:1", n, n);
            b.pin.cluster = Some("app".into());
            t.put(&store, &b, n).unwrap();
        }
        assert_eq!(store.data.borrow().len(), keys_after_prepare);
        let held: usize = store
            .data
            .borrow()
            .values()
            .map(|(v, _)| decode_bucket(v).len())
            .sum();
        assert!(held <= t.bucket_count() as usize * SLOTS_PER_BUCKET);
        assert!(
            held >= 900,
            "the table fills up to about its capacity, got {held}"
        );
    }

    #[test]
    fn prepare_is_idempotent_and_keeps_bindings() {
        let store = FakeStore::default();
        let t = table(64, Lifetimes::default());
        assert_eq!(t.prepare(&store).unwrap(), 8);
        t.put(&store, &binding(1, "a", 0), 0).unwrap();
        assert_eq!(t.prepare(&store).unwrap(), 0);
        assert!(live(&t, &store, &id(1), 0));
    }

    #[test]
    fn cas_conflicts_are_retried_then_given_up() {
        let store = FakeStore::default();
        let t = table(100, Lifetimes::default());
        t.prepare(&store).unwrap();
        store.force_mismatches.set(3);
        let r = t.put(&store, &binding(1, "a", 0), 0).unwrap();
        assert_eq!(r.cas_retries, 3);
        assert!(live(&t, &store, &id(1), 0));

        store.force_mismatches.set(MAX_CAS_RETRIES + 1);
        assert_eq!(
            t.put(&store, &binding(2, "b", 0), 0),
            Err(WriteError::Contended)
        );
        assert_eq!(t.lookup(&store, &id(2), 0), Lookup::Unknown);
        // The earlier binding survived the failed attempts.
        assert!(live(&t, &store, &id(1), 0));
        store.refuse_writes.set(true);
        assert_eq!(
            t.put(&store, &binding(3, "c", 0), 0),
            Err(WriteError::Store)
        );
    }

    #[test]
    fn interleaved_writers_lose_nothing() {
        // Two writers read the same bucket, then both write: the second must notice and merge.
        let store = FakeStore::default();
        let t = table(8, Lifetimes::default()); // one bucket
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
        assert!(live(&t, &store, &id(1), 0));
        assert!(live(&t, &store, &id(2), 0));
    }
}
