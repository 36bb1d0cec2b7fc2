//! The decisions, free of any host: what a request's session is, and what its response must
//! record and issue. The proxy-wasm adapter (`filter`) feeds these functions what it read from
//! Envoy (through the `Request` and `Response` traits) and carries out what they return.
//!
//! Two families of session types:
//! - `cookie` and `header`: tether issues a sealed token that carries the pin itself
//!   (`seal`); nothing is stored, and every Envoy with the keys reads the same pin.
//! - `learn` and `source_ip`: the session id is the client's or the application's (or the
//!   client's address); tether keeps id → endpoint in the binding table (`table`).

use crate::config::{LearnFrom, LifetimeType, OnUnavailable, SessionType, Settings, KEY_LEN};
use crate::cookies;
use crate::seal::{Pin, Sealer};
use crate::table::{Binding, BindingTable, Lifetimes, Lookup, Store, WriteError, WriteReport};
use crate::token::{Entropy, SessionId, ID_LEN};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Longest learned id (header, query or application cookie value) tether binds.
pub const MAX_LEARNED_LEN: usize = 512;
/// Without an idle timeout, how often a table binding's last use is written back.
pub const LRU_TOUCH_MS: u64 = 5_000;

/// What the engine needs to read from a request. Each call may cost a host call, so the
/// engine asks only for what its session type uses.
pub trait Request {
    fn header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// The downstream peer, `IP:port`.
    fn source_address(&mut self) -> Option<String>;
}

/// What the engine needs to read about a response.
pub trait Response {
    /// The endpoint Envoy says handled the request, `IP:port`.
    fn upstream(&mut self) -> Option<String>;
    /// Whether the response came from that endpoint (not a local reply).
    fn came_from_upstream(&mut self) -> bool;
    /// The cluster that handled the request.
    fn cluster(&mut self) -> Option<String>;
    /// Every `Set-Cookie` header of the response.
    fn set_cookies(&mut self) -> Vec<Vec<u8>>;
    /// The response's status code.
    fn status(&mut self) -> Option<u16>;
}

pub struct Engine {
    pub settings: Settings,
    pub table: BindingTable,
    sealer: Sealer,
    /// Secret mixed into the hash of learned ids, so clients cannot aim at a bucket.
    salt: [u8; 16],
}

/// What the request phase found; carried to the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestState {
    pub found: Found,
    /// For `learn` and `source_ip`: the request's session key, if it had one.
    pub key: Option<Learned>,
    /// The binding came from a companion token, not this Envoy's table: record it here.
    pub adopted: bool,
}

/// A session key tether did not issue (learned id, client address) and its table id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub id: SessionId,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No usable session: the load balancer chooses, the response binds.
    New(Miss),
    /// The session is pinned; the host header was set to `pin.endpoint`.
    Pinned(Pin),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The request carried no session (no token, no learned id, no address).
    NoToken,
    /// A token or id tether does not know: never issued, sealed by another key, forgotten
    /// or evicted.
    Unknown,
    /// A session that outlived its idle or absolute lifetime.
    Expired,
}

/// Changes the adapter makes to the request before it goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestEdits {
    /// Set the host header to this endpoint.
    pub host: Option<String>,
    /// Set the cluster header to this cluster.
    pub cluster: Option<String>,
    /// Replace the Cookie header (tether's own cookie removed); empty: remove the header.
    pub cookie: Option<Vec<u8>>,
    /// Remove the request header that carried the token.
    pub remove_header: Option<String>,
    /// Strict sessions must not be retried onto another endpoint.
    pub no_retries: bool,
}

/// What the response phase did, for the log line and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAction {
    pub decision: Decision,
    /// A Set-Cookie header value to add.
    pub set_cookie: Option<String>,
    /// A response header (name, value) to set: the token, for `type: header`.
    pub set_header: Option<(String, String)>,
    /// Strict refusal: answer with this status and `Retry-After` seconds instead.
    pub refuse: Option<(u16, u64)>,
    /// Binding table writes: CAS races lost, live bindings evicted, change in bindings held.
    pub cas_retries: usize,
    pub evictions: usize,
    pub bindings_delta: i64,
}

impl ResponseAction {
    fn record(&mut self, r: &WriteReport) {
        self.cas_retries += r.cas_retries;
        self.evictions += usize::from(r.evicted_live);
        self.bindings_delta += r.bindings_delta;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new session was bound to the endpoint that served it.
    Issued { endpoint: String, miss: Miss },
    /// The pinned endpoint served the request.
    Hit { endpoint: String, refreshed: bool },
    /// The pinned endpoint did not serve (it died or left): the session moved.
    Rebound { from: String, to: String },
    /// The pinned endpoint did not serve and the policy is strict: refused.
    Refused { endpoint: String },
    /// Nothing could serve the pinned session (every try failed): it was let go.
    Dropped { endpoint: String },
    /// No upstream answered (a local reply), or nothing identifies the session: nothing
    /// recorded.
    Unserved,
    /// The binding could not be written (shared data refused, or CAS lost every time).
    WriteFailed(WriteError),
    /// The host gave no randomness: no token could be sealed.
    NoEntropy,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Miss::NoToken => "no_session",
            Miss::Unknown => "unknown_session",
            Miss::Expired => "expired",
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Issued { endpoint, miss } => {
                write!(f, "decision=new endpoint={endpoint} reason={miss}")
            }
            Decision::Hit {
                endpoint,
                refreshed,
            } => write!(f, "decision=hit endpoint={endpoint} refreshed={refreshed}"),
            Decision::Rebound { from, to } => write!(f, "decision=rebind from={from} to={to}"),
            Decision::Refused { endpoint } => {
                write!(f, "decision=strict_refusal endpoint={endpoint}")
            }
            Decision::Dropped { endpoint } => {
                write!(f, "decision=dropped endpoint={endpoint}")
            }
            Decision::Unserved => write!(f, "decision=unserved"),
            Decision::WriteFailed(e) => write!(f, "decision=write_failed error={e:?}"),
            Decision::NoEntropy => write!(f, "decision=no_entropy"),
        }
    }
}

impl Engine {
    /// `process_key` seals and opens tokens when the configuration lists no keys.
    pub fn new(settings: Settings, process_key: [u8; KEY_LEN]) -> Self {
        let lifetimes = Lifetimes {
            absolute_ms: settings.absolute_timeout_ms,
            idle_ms: settings.idle_timeout_ms,
        };
        let table = BindingTable::new(&settings.session_name, settings.max_sessions, lifetimes);
        let keys = if settings.keys.is_empty() {
            vec![process_key]
        } else {
            settings.keys.clone()
        };
        let sealer = Sealer::new(&keys, &settings.session_name);
        let mut salt = [0u8; 16];
        for (s, k) in salt
            .iter_mut()
            .zip(keys.first().unwrap_or(&process_key).iter().rev())
        {
            *s = *k;
        }
        Engine {
            settings,
            table,
            sealer,
            salt,
        }
    }

    fn uses_table(&self) -> bool {
        matches!(
            self.settings.session_type,
            SessionType::Learn | SessionType::SourceIp
        )
    }

    /// Whether the adapter must create the binding table's buckets.
    pub fn needs_table(&self) -> bool {
        self.uses_table()
    }

    fn lifetimes(&self) -> Lifetimes {
        self.table.lifetimes()
    }

    /// Request phase: find the session and say how to edit the request.
    pub fn on_request(
        &self,
        store: &dyn Store,
        req: &mut dyn Request,
        now_ms: u64,
    ) -> (RequestState, RequestEdits) {
        let mut edits = RequestEdits::default();
        let mut adopted = false;
        let (found, key) = match self.settings.session_type {
            SessionType::Cookie => (self.token_from_cookie(req, now_ms, &mut edits), None),
            SessionType::Header => (self.token_from_header(req, now_ms, &mut edits), None),
            SessionType::Learn | SessionType::SourceIp => {
                self.keyed(store, req, now_ms, &mut edits, &mut adopted)
            }
        };
        if let Found::Pinned(pin) = &found {
            edits.host = Some(pin.endpoint.clone());
            if self.settings.cluster_header.is_some() {
                edits.cluster = pin.cluster.clone();
            }
            edits.no_retries = self.settings.on_unavailable == OnUnavailable::Strict;
        }
        (
            RequestState {
                found,
                key,
                adopted,
            },
            edits,
        )
    }

    fn token_from_cookie(
        &self,
        req: &mut dyn Request,
        now_ms: u64,
        edits: &mut RequestEdits,
    ) -> Found {
        let Some(header) = req.header("cookie") else {
            return Found::New(Miss::NoToken);
        };
        let tokens = cookies::values(&header, &self.settings.session_name);
        if tokens.is_empty() {
            return Found::New(Miss::NoToken);
        }
        // The backend has no use for tether's cookie; it leaves with it.
        edits.cookie = cookies::without(&header, &self.settings.session_name);
        self.open_first(tokens.iter().map(String::as_bytes), now_ms)
    }

    fn token_from_header(
        &self,
        req: &mut dyn Request,
        now_ms: u64,
        edits: &mut RequestEdits,
    ) -> Found {
        let name = self.settings.session_name.to_ascii_lowercase();
        let Some(value) = req.header(&name) else {
            return Found::New(Miss::NoToken);
        };
        edits.remove_header = Some(name);
        self.open_first(std::iter::once(value.trim_ascii()), now_ms)
    }

    fn open_first<'a>(&self, tokens: impl Iterator<Item = &'a [u8]>, now_ms: u64) -> Found {
        let mut miss = Miss::Unknown;
        for token in tokens.take(cookies::MAX_CANDIDATES) {
            if let Some(pin) = self.sealer.open(token, b"") {
                if self
                    .lifetimes()
                    .is_expired_at(pin.created_ms, pin.last_seen_ms, now_ms)
                {
                    miss = Miss::Expired;
                } else {
                    return Found::Pinned(pin);
                }
            }
        }
        Found::New(miss)
    }

    fn keyed(
        &self,
        store: &dyn Store,
        req: &mut dyn Request,
        now_ms: u64,
        edits: &mut RequestEdits,
        adopted: &mut bool,
    ) -> (Found, Option<Learned>) {
        let cookie_header = match self.companion_name() {
            Some(_) => req.header("cookie"),
            None => None,
        };
        let Some(key) = self.request_key(req, cookie_header.as_deref()) else {
            return (Found::New(Miss::NoToken), None);
        };
        let mut found = match self.table.lookup(store, &key.id, now_ms) {
            Lookup::Live(b) => Found::Pinned(pin_of(&b)),
            Lookup::Expired(_) => Found::New(Miss::Expired),
            Lookup::Unknown => Found::New(Miss::Unknown),
        };
        if let (Some(name), Some(header)) = (self.companion_name(), &cookie_header) {
            // Another replica bound this id: its companion token says where, and opens only
            // next to this very id.
            if found == Found::New(Miss::Unknown) {
                let companion = cookies::values(header, &name)
                    .iter()
                    .filter_map(|t| self.sealer.open(t.as_bytes(), &key.value))
                    .find(|p| {
                        !self
                            .lifetimes()
                            .is_expired_at(p.created_ms, p.last_seen_ms, now_ms)
                    });
                if let Some(pin) = companion {
                    found = Found::Pinned(pin);
                    *adopted = true;
                }
            }
            edits.cookie = cookies::without(header, &name);
        }
        (found, Some(key))
    }

    /// The companion cookie that lets replicas agree on a learned application cookie:
    /// `tether-<session_name>`, a sealed pin bound to the application's id.
    pub fn companion_name(&self) -> Option<String> {
        (self.settings.session_type == SessionType::Learn
            && self.settings.learn_from == LearnFrom::Cookie)
            .then(|| format!("tether-{}", self.settings.session_name))
    }

    /// The request's session key (`learn`, `source_ip`).
    fn request_key(&self, req: &mut dyn Request, cookie_header: Option<&[u8]>) -> Option<Learned> {
        let name = &self.settings.session_name;
        let value: Vec<u8> = match (self.settings.session_type, self.settings.learn_from) {
            (SessionType::SourceIp, _) => client_ip(req, self.settings.trusted_hops)?
                .to_string()
                .into_bytes(),
            (_, LearnFrom::Cookie) => {
                let header = match cookie_header {
                    Some(h) => h.to_vec(),
                    None => req.header("cookie")?,
                };
                cookies::values(&header, name)
                    .into_iter()
                    .next()?
                    .into_bytes()
            }
            (_, LearnFrom::Header) => req
                .header(&name.to_ascii_lowercase())?
                .trim_ascii()
                .to_vec(),
            (_, LearnFrom::Query) => query_value(&req.header(":path")?, name)?.to_vec(),
        };
        self.learned(value)
    }

    fn learned(&self, value: Vec<u8>) -> Option<Learned> {
        if value.is_empty() || value.len() > MAX_LEARNED_LEN {
            return None;
        }
        use std::hash::Hasher;
        let mut id = [0u8; ID_LEN];
        for (half, chunk) in id.chunks_mut(8).enumerate() {
            let mut h = fnv::FnvHasher::default();
            h.write(&self.salt);
            h.write_u8(half as u8);
            h.write(&value);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        Some(Learned {
            id: SessionId(id),
            value,
        })
    }

    /// Response phase.
    pub fn on_response(
        &self,
        store: &dyn Store,
        state: &RequestState,
        resp: &mut dyn Response,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        let upstream = resp.upstream();
        let status = resp.status();
        // A failed attempt at an endpoint names it as the upstream too: only a response that
        // really came from it counts. Envoy's own replies after a failed attempt are 5xx, so
        // below 500 the status (a header read) answers, and `came_from_upstream` (the costlier
        // `response.code_details` property) is asked only for a 5xx.
        let from_upstream = |resp: &mut dyn Response| {
            status.is_some_and(|code| code < 500) || resp.came_from_upstream()
        };
        let strict = self.settings.on_unavailable == OnUnavailable::Strict;
        if let Found::Pinned(pin) = &state.found {
            let served_by_pin =
                upstream.as_deref() == Some(pin.endpoint.as_str()) && from_upstream(resp);
            if served_by_pin {
                return self.hit(store, state, pin, resp, now_ms, entropy);
            }
            if strict {
                return ResponseAction {
                    refuse: Some((
                        self.settings.unavailable_status,
                        self.settings.retry_after_s,
                    )),
                    ..action(Decision::Refused {
                        endpoint: pin.endpoint.clone(),
                    })
                };
            }
        }
        let served = upstream.filter(|_| from_upstream(resp));
        let Some(served) = served else {
            if let Found::Pinned(pin) = &state.found {
                // Every try failed: the session's endpoint, and every retry, is down (a whole
                // canary cluster stopped, say). Rebalancing means letting go, so the next
                // request is load-balanced afresh instead of failing until the session expires.
                if status.is_some_and(|code| code >= 500) {
                    return self.drop_session(store, state, pin, now_ms);
                }
            }
            return action(Decision::Unserved);
        };
        let cluster = if self.settings.cluster_header.is_some() {
            resp.cluster()
        } else {
            None
        };
        let (created_ms, decision) = match &state.found {
            Found::Pinned(old) => (
                old.created_ms,
                Decision::Rebound {
                    from: old.endpoint.clone(),
                    to: served.clone(),
                },
            ),
            Found::New(miss) => (
                now_ms,
                Decision::Issued {
                    endpoint: served.clone(),
                    miss: *miss,
                },
            ),
        };
        let pin = Pin {
            endpoint: served,
            cluster,
            created_ms,
            last_seen_ms: now_ms,
        };
        if self.uses_table() {
            let learned = self.learned_from_response(resp);
            // The id the application just issued goes where the application issued it; the
            // id the request carried (if any) follows the session too.
            let keys: Vec<&Learned> = learned.iter().chain(state.key.as_ref()).collect();
            if keys.is_empty() {
                return action(Decision::Unserved);
            }
            self.bind_learned(store, &keys, &pin, now_ms, decision, entropy)
        } else {
            self.issue_token(&pin, now_ms, decision, entropy)
        }
    }

    fn hit(
        &self,
        store: &dyn Store,
        state: &RequestState,
        pin: &Pin,
        resp: &mut dyn Response,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        // The application may have started a new session of its own on the same endpoint.
        if let Some(learned) = self.learned_from_response(resp) {
            if Some(&learned.id) != state.key.as_ref().map(|k| &k.id) {
                let fresh = Pin {
                    created_ms: now_ms,
                    last_seen_ms: now_ms,
                    ..pin.clone()
                };
                let decision = Decision::Issued {
                    endpoint: pin.endpoint.clone(),
                    miss: Miss::NoToken,
                };
                return self.bind_learned(store, &[&learned], &fresh, now_ms, decision, entropy);
            }
        }
        // Table bindings record use even without an idle timeout: eviction picks the least
        // recently used, and needs to know which that is.
        let every = match (self.lifetimes().touch_interval_ms(), self.uses_table()) {
            (Some(every), _) => Some(every),
            (None, true) => Some(LRU_TOUCH_MS),
            (None, false) => None,
        };
        // A table binding's first return is always recorded: eviction keeps sessions that
        // came back ahead of ids seen once (a flood of new clients), whatever the interval.
        let first_return = self.uses_table() && pin.last_seen_ms <= pin.created_ms;
        let due = first_return
            || every.is_some_and(|every| now_ms.saturating_sub(pin.last_seen_ms) >= every);
        let decision = Decision::Hit {
            endpoint: pin.endpoint.clone(),
            refreshed: due,
        };
        // Built only where it is written: a plain hit (the common case) copies nothing.
        let refreshed = || Pin {
            last_seen_ms: now_ms,
            ..pin.clone()
        };
        match &state.key {
            // Pinned by another replica's companion token: this Envoy learns the binding too.
            Some(key) if state.adopted => {
                self.bind_learned(store, &[key], &refreshed(), now_ms, decision, entropy)
            }
            _ if !due => action(decision),
            Some(key) if self.companion_name().is_some() => {
                self.bind_learned(store, &[key], &refreshed(), now_ms, decision, entropy)
            }
            Some(key) => {
                // A lost touch only shortens the session by one interval: no retry storm.
                let mut hit = action(decision);
                if let Ok(r) = self.table.touch(store, &key.id, &pin.endpoint, now_ms) {
                    hit.record(&r);
                }
                hit
            }
            None => self.issue_token(&refreshed(), now_ms, decision, entropy),
        }
    }

    /// The application's new session id, from a `Set-Cookie` of the response (`learn_from:
    /// cookie` only).
    fn learned_from_response(&self, resp: &mut dyn Response) -> Option<Learned> {
        self.companion_name()?;
        let name = &self.settings.session_name;
        let value = resp
            .set_cookies()
            .iter()
            .find_map(|h| cookies::set_cookie_value(h, name))?;
        self.learned(value.into_bytes())
    }

    /// Writes `pin` for every key; with a companion cookie, hands the client a sealed copy
    /// bound to the first key.
    fn bind_learned(
        &self,
        store: &dyn Store,
        keys: &[&Learned],
        pin: &Pin,
        now_ms: u64,
        decision: Decision,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        let mut total = action(decision);
        for key in keys {
            let binding = Binding {
                id: key.id,
                endpoint: pin.endpoint.clone(),
                cluster: pin.cluster.clone(),
                created_ms: pin.created_ms,
                last_seen_ms: pin.last_seen_ms,
            };
            match self.table.put(store, &binding, now_ms) {
                Ok(report) => total.record(&report),
                Err(e) => return action(Decision::WriteFailed(e)),
            }
        }
        if let (Some(name), Some(first)) = (self.companion_name(), keys.first()) {
            if let Some(token) = self.sealer.seal(pin, &first.value, entropy) {
                total.set_cookie = Some(cookies::set_cookie(
                    &name,
                    &token,
                    &self.settings.cookie,
                    self.max_age_s(pin, now_ms),
                ));
            }
        }
        total
    }

    fn max_age_s(&self, pin: &Pin, now_ms: u64) -> Option<u64> {
        match (
            self.settings.cookie.lifetime_type,
            self.settings.absolute_timeout_ms,
        ) {
            (LifetimeType::Permanent, Some(limit)) => Some(
                (pin.created_ms + limit)
                    .saturating_sub(now_ms)
                    .div_ceil(1000),
            ),
            _ => None,
        }
    }

    /// Ends a pinned session: the client's token is cleared (an expired cookie, an empty
    /// header) and the table forgets its binding.
    fn drop_session(
        &self,
        store: &dyn Store,
        state: &RequestState,
        pin: &Pin,
        now_ms: u64,
    ) -> ResponseAction {
        let mut dropped = action(Decision::Dropped {
            endpoint: pin.endpoint.clone(),
        });
        if let Some(key) = &state.key {
            if let Ok(r) = self.table.remove(store, &key.id, &pin.endpoint, now_ms) {
                dropped.record(&r);
            }
        }
        let cookie_name = match self.settings.session_type {
            SessionType::Cookie => Some(self.settings.session_name.clone()),
            _ => self.companion_name(),
        };
        if let Some(name) = cookie_name {
            dropped.set_cookie = Some(cookies::expired(&name, &self.settings.cookie));
        }
        if self.settings.session_type == SessionType::Header {
            dropped.set_header = Some((
                self.settings.session_name.to_ascii_lowercase(),
                String::new(),
            ));
        }
        dropped
    }

    fn issue_token(
        &self,
        pin: &Pin,
        now_ms: u64,
        decision: Decision,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        let Some(token) = self.sealer.seal(pin, b"", entropy) else {
            return action(Decision::NoEntropy);
        };
        let name = &self.settings.session_name;
        match self.settings.session_type {
            SessionType::Header => ResponseAction {
                set_header: Some((name.to_ascii_lowercase(), token)),
                ..action(decision)
            },
            _ => ResponseAction {
                set_cookie: Some(cookies::set_cookie(
                    name,
                    &token,
                    &self.settings.cookie,
                    self.max_age_s(pin, now_ms),
                )),
                ..action(decision)
            },
        }
    }
}

/// A response action that only reports `decision`.
pub(crate) fn action(decision: Decision) -> ResponseAction {
    ResponseAction {
        decision,
        set_cookie: None,
        set_header: None,
        refuse: None,
        cas_retries: 0,
        evictions: 0,
        bindings_delta: 0,
    }
}

fn pin_of(b: &Binding) -> Pin {
    Pin {
        endpoint: b.endpoint.clone(),
        cluster: b.cluster.clone(),
        created_ms: b.created_ms,
        last_seen_ms: b.last_seen_ms,
    }
}

/// The client's address. With `trusted_hops` 0: Envoy's downstream address (the peer, with
/// the HTTP connection manager's `use_remote_address: true`). With N: the `X-Forwarded-For`
/// entry N hops from the right. Envoy with `use_remote_address: true` has appended the peer as
/// the rightmost entry (hop 0), so hop N is the address the outermost of N trusted proxies
/// saw; entries further left are the client's to invent and never count. Falls back to the
/// peer when the header has too few entries or a malformed one.
pub fn client_ip(req: &mut dyn Request, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops > 0 {
        if let Some(xff) = req.header("x-forwarded-for") {
            let from_xff = xff
                .rsplit(|&b| b == b',')
                .nth(trusted_hops)
                .and_then(|entry| parse_ip(entry.trim_ascii()));
            if from_xff.is_some() {
                return from_xff;
            }
        }
    }
    parse_ip(req.source_address()?.as_bytes())
}

fn parse_ip(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| match ip {
            // One client, one key, whichever way its IPv4 address is written.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        })
}

/// The raw value of query parameter `name` in a request path.
fn query_value<'a>(path: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let start = path.iter().position(|&b| b == b'?')? + 1;
    let query = path.get(start..)?;
    let query = query.split(|&b| b == b'#').next()?;
    query.split(|&b| b == b'&').find_map(|pair| {
        let mut it = pair.splitn(2, |&b| b == b'=');
        (it.next()? == name.as_bytes()).then(|| it.next().unwrap_or(b""))
    })
}

#[cfg(test)]
mod tests;
