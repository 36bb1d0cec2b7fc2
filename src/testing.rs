//! Test doubles for the core, one set for the unit, property and token tests and the fuzz
//! targets (feature `testing`; never in the module): shared data that behaves like Envoy's,
//! and requests and responses as the adapter would hand them over.

use crate::http::{Headers, Request, Response};
use crate::table::{Recent, SessionId, Store, StoreError};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// In-memory shared data with Envoy's semantics: a CAS number per key, numbered from 1 across
/// all keys; a write with a CAS is refused when the key exists with another number, and the
/// creation of a key is never guarded. It can be told to lose the next CAS races.
#[derive(Default)]
pub struct FakeStore {
    pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// The next this many conditional writes fail with a CAS mismatch, as if another worker
    /// had written just before.
    pub force_mismatches: Cell<usize>,
    /// Every write fails (the host refuses).
    pub refuse_writes: Cell<bool>,
    pub sets: Cell<usize>,
    pub gets: Cell<usize>,
    /// A worker's memory of fresh records, as the module keeps one (`FakeStore::remembering`).
    pub memory: RefCell<Option<Recent>>,
}

impl FakeStore {
    /// A store that also remembers fresh records, like the module's per-worker memory.
    pub fn remembering(slots: usize) -> FakeStore {
        FakeStore {
            memory: RefCell::new(Some(Recent::new(slots))),
            ..FakeStore::default()
        }
    }
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
        if self.refuse_writes.get() {
            return Err(StoreError::Failed);
        }
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

    fn recall(&self, table: u64, id: &SessionId) -> Option<u64> {
        self.memory.borrow().as_ref()?.recall(table, id)
    }

    fn remember(&self, table: u64, id: &SessionId, seen_ms: Option<u64>) {
        if let Some(memory) = self.memory.borrow_mut().as_mut() {
            memory.remember(table, id, seen_ms);
        }
    }
}

/// A request: its header map (names as Envoy gives them, lower case) and peer address.
#[derive(Debug, Clone, Default)]
pub struct FakeRequest {
    pub headers: Headers,
    pub source: Option<String>,
    pub source_reads: usize,
    pub header_reads: usize,
    pub map_reads: usize,
    pub body: bool,
}

impl FakeRequest {
    /// `GET /` from 127.0.0.1.
    pub fn new() -> FakeRequest {
        FakeRequest::get("/")
    }

    pub fn get(path: &str) -> FakeRequest {
        FakeRequest::method("GET", path)
    }

    pub fn method(method: &str, path: &str) -> FakeRequest {
        let mut headers = Headers::default();
        headers.push(":method", method.as_bytes());
        headers.push(":path", path.as_bytes());
        FakeRequest {
            headers,
            source: Some("127.0.0.1:40000".into()),
            ..FakeRequest::default()
        }
    }

    /// One more field (a repeated name adds another field, as HTTP/1.1 allows).
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> FakeRequest {
        self.headers.push(name, value.as_ref());
        self
    }

    pub fn cookie(self, value: impl AsRef<[u8]>) -> FakeRequest {
        self.header("cookie", value)
    }

    /// A body follows the headers (a POST's JSON, say).
    pub fn with_body(mut self) -> FakeRequest {
        self.body = true;
        self
    }

    pub fn from_address(mut self, address: Option<&str>) -> FakeRequest {
        self.source = address.map(str::to_string);
        self
    }
}

impl Request for FakeRequest {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        self.header_reads += 1;
        self.headers.first(name).map(<[u8]>::to_vec)
    }
    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.map_reads += 1;
        self.headers.values(name)
    }
    fn source_address(&mut self) -> Option<String> {
        self.source_reads += 1;
        self.source.clone()
    }
    fn has_body(&self) -> bool {
        self.body
    }
}

/// A response as Envoy reports it: status and headers, the endpoint it was sent to, Envoy's
/// code details and the cluster. Counts the property reads the core makes.
#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub headers: Headers,
    pub upstream: Option<String>,
    pub details: String,
    pub cluster: Option<String>,
    pub upstream_reads: Cell<usize>,
    pub details_reads: Cell<usize>,
    pub cluster_reads: Cell<usize>,
    /// Reads of one header's first value, and of every value of one (the whole map, for the
    /// adapter).
    pub header_reads: Cell<usize>,
    pub map_reads: Cell<usize>,
}

impl FakeResponse {
    /// `status` from `upstream` (`None`: no endpoint was chosen), `via_upstream` when there is
    /// one, cluster `app`.
    pub fn new(status: u16, upstream: Option<&str>) -> FakeResponse {
        let mut headers = Headers::default();
        headers.push(":status", status.to_string().as_bytes());
        FakeResponse {
            headers,
            upstream: upstream.map(str::to_string),
            details: if upstream.is_some() {
                "via_upstream".into()
            } else {
                "route_not_found".into()
            },
            cluster: Some("app".into()),
            upstream_reads: Cell::new(0),
            details_reads: Cell::new(0),
            cluster_reads: Cell::new(0),
            header_reads: Cell::new(0),
            map_reads: Cell::new(0),
        }
    }

    /// A 200 from `endpoint`.
    pub fn ok(endpoint: &str) -> FakeResponse {
        FakeResponse::new(200, Some(endpoint))
    }

    /// Envoy's own reply after it tried `endpoint`, with these details.
    pub fn envoy(status: u16, endpoint: Option<&str>, details: &str) -> FakeResponse {
        FakeResponse::new(status, endpoint).details(details)
    }

    pub fn details(mut self, details: &str) -> FakeResponse {
        self.details = details.to_string();
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> FakeResponse {
        self.headers.push(name, value.as_ref());
        self
    }

    pub fn set_cookie(self, value: &str) -> FakeResponse {
        self.header("set-cookie", value)
    }

    pub fn in_cluster(mut self, cluster: Option<&str>) -> FakeResponse {
        self.cluster = cluster.map(str::to_string);
        self
    }
}

impl Response for FakeResponse {
    fn first(&mut self, name: &str) -> Option<Vec<u8>> {
        self.header_reads.set(self.header_reads.get() + 1);
        self.headers.first(name).map(<[u8]>::to_vec)
    }
    fn all(&mut self, name: &str) -> Vec<&[u8]> {
        self.map_reads.set(self.map_reads.get() + 1);
        self.headers.values(name)
    }
    fn upstream(&mut self) -> Option<String> {
        self.upstream_reads.set(self.upstream_reads.get() + 1);
        self.upstream.clone()
    }
    fn code_details(&mut self) -> Option<String> {
        self.details_reads.set(self.details_reads.get() + 1);
        Some(self.details.clone())
    }
    fn cluster(&mut self) -> Option<String> {
        self.cluster_reads.set(self.cluster_reads.get() + 1);
        self.cluster.clone()
    }
}
