//! Table sessions (`learn`, `source_ip`): the session key is one tether did not issue (the
//! application's cookie, the client's header or query parameter, the client's address), kept
//! key → endpoint in the binding table of this Envoy.

use super::token_sessions::{cookie_header_op, guard_set_cookies, max_age_s, within_path};
use super::{
    cluster_of, pin_ops, refusal, verdict, Decision, Found, Miss, ResponseAction, Verdict,
};
use crate::config::{CookieSettings, Kind, LearnSource, Routing, SessionType, Settings};
use crate::cookies;
use crate::entropy::Entropy;
use crate::http::{HeaderOp, Request, Response};
use crate::outcome::Outcome;
use crate::pin::{Lifetimes, Pin};
use crate::seal::{Carrier, Sealer};
use crate::secret::{IdHasher, Key};
use crate::table::{Binding, BindingTable, Lookup, SessionId, Store, WriteReport};
use std::net::{IpAddr, SocketAddr};

/// Longest learned id (application cookie, header or query value) tether binds; a longer one
/// is never bound (`decision=unbound reason=id_too_long`, counted in `tether_ids_too_long`).
pub const MAX_LEARNED_LEN: usize = 512;
/// Without an idle timeout, how often a table binding's last use is written back (eviction
/// picks the least recently used, and needs to know which that is).
pub const LRU_TOUCH_MS: u64 = 5_000;

/// Where the session key comes from.
enum KeySource {
    /// The application's cookie `name`. Replicas agree through the companion cookie: the pin
    /// sealed next to the application's id.
    Cookie { name: String, companion: Companion },
    /// A request header (lower case).
    Header { name: String },
    /// A query parameter.
    Query { name: String },
    /// The client's address.
    SourceIp { trusted_hops: usize },
}

struct Companion {
    /// `tether-<session_name>`.
    name: String,
    attributes: CookieSettings,
    sealer: Sealer,
}

pub struct TableSessions {
    session_name: String,
    source: KeySource,
    table: BindingTable,
    hasher: IdHasher,
    lifetimes: Lifetimes,
    routing: Routing,
}

/// A session key tether did not issue (learned id, client address) and its table id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub id: SessionId,
    pub value: Vec<u8>,
}

/// What the request phase found, for the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    pub found: Found,
    /// The request's session key, if it had one.
    pub key: Option<Learned>,
    /// The binding had come back before (its return is recorded once).
    pub returned: bool,
    /// The pin came from a companion cookie (another replica bound the id): this Envoy
    /// records it too.
    pub adopted: bool,
}

impl TableSessions {
    pub fn new(settings: &Settings, process_secret: &Key) -> TableSessions {
        let name = settings.session_name.clone();
        let source = match &settings.kind {
            Kind::Learn {
                source: LearnSource::Cookie { companion },
                ..
            } => {
                let keys = if settings.keys.is_empty() {
                    vec![*process_secret]
                } else {
                    settings.keys.clone()
                };
                KeySource::Cookie {
                    companion: Companion {
                        name: format!("tether-{name}"),
                        attributes: companion.clone(),
                        sealer: Sealer::new(&keys, Carrier::Companion, &name),
                    },
                    name: name.clone(),
                }
            }
            Kind::Learn {
                source: LearnSource::Header { header },
                ..
            } => KeySource::Header {
                name: header.clone(),
            },
            Kind::Learn {
                source: LearnSource::Query,
                ..
            } => KeySource::Query { name: name.clone() },
            // `ResponseSessions` serves these (`Policy::new`); the client's header is the key.
            Kind::Learn {
                source: LearnSource::ResponseHeader { request_header, .. },
                ..
            } => KeySource::Header {
                name: request_header.clone(),
            },
            Kind::SourceIp { trusted_hops, .. } => KeySource::SourceIp {
                trusted_hops: *trusted_hops,
            },
            // Token types never reach here (`Policy::new`); an address table is harmless.
            Kind::Cookie(_) | Kind::Header { .. } => KeySource::SourceIp { trusted_hops: 0 },
        };
        let shape = settings.table_shape().unwrap_or(crate::table::TableShape {
            capacity: crate::config::DEFAULT_MAX_SESSIONS,
            lifetimes: settings.lifetimes,
        });
        TableSessions {
            table: BindingTable::new(&name, shape),
            session_name: name,
            source,
            hasher: IdHasher::new(process_secret),
            lifetimes: settings.lifetimes,
            routing: settings.routing.clone(),
        }
    }

    pub fn session_type(&self) -> SessionType {
        match self.source {
            KeySource::SourceIp { .. } => SessionType::SourceIp,
            _ => SessionType::Learn,
        }
    }

    pub fn session_name(&self) -> &str {
        &self.session_name
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn table(&self) -> &BindingTable {
        &self.table
    }

    pub fn on_request(
        &self,
        req: &mut dyn Request,
        store: &dyn Store,
        now_ms: u64,
    ) -> (TableState, Vec<HeaderOp<'_>>) {
        let mut ops = Vec::with_capacity(4);
        let mut state = TableState {
            found: Found::New(Miss::NoToken),
            key: None,
            returned: false,
            adopted: false,
        };
        if let KeySource::Cookie { companion, .. } = &self.source {
            if !within_path(req, &companion.attributes.path) {
                state.found = Found::OutsidePath;
                return (state, ops);
            }
        }
        let key = match self.request_key(req) {
            Ok(Some(key)) => key,
            Ok(None) => return (state, ops),
            Err(miss) => {
                state.found = Found::New(miss);
                return (state, ops);
            }
        };
        state.found = match self.table.lookup(store, &key.id, now_ms) {
            Lookup::Live(b) => {
                state.returned = b.returned;
                Found::Pinned(b.pin)
            }
            Lookup::Expired(_) => Found::New(Miss::Expired),
            Lookup::Unknown => Found::New(Miss::Unknown),
        };
        if let KeySource::Cookie { companion, .. } = &self.source {
            let fields = req.all("cookie");
            let fields = || fields.iter().copied();
            if state.found == Found::New(Miss::Unknown) {
                // Another replica bound this id: its companion token says where, and opens
                // only next to this very id.
                let adopted = cookies::values(fields(), &companion.name)
                    .into_iter()
                    .filter_map(|t| companion.sealer.open(t, &key.value))
                    .find(|p| !self.lifetimes.is_expired(p, now_ms));
                if let Some(pin) = adopted {
                    state.found = Found::Pinned(pin);
                    state.adopted = true;
                }
            }
            if let Some(rest) = cookies::without(fields(), &[&companion.name]) {
                ops.push(cookie_header_op(rest));
            }
        }
        if let Found::Pinned(pin) = &state.found {
            pin_ops(&self.routing, pin, &mut ops);
        }
        state.key = Some(key);
        (state, ops)
    }

    /// The request's session key: `Ok(None)` when it has none, `Err` when it has one tether
    /// will not bind.
    fn request_key(&self, req: &mut dyn Request) -> Result<Option<Learned>, Miss> {
        let value: Vec<u8> = match &self.source {
            KeySource::SourceIp { trusted_hops } => match client_ip(req, *trusted_hops) {
                Some(ip) => ip.to_string().into_bytes(),
                None => return Ok(None),
            },
            KeySource::Cookie { name, .. } => {
                let fields = req.all("cookie");
                match cookies::values(fields.iter().copied(), name).first() {
                    Some(v) => v.to_vec(),
                    None => return Ok(None),
                }
            }
            KeySource::Header { name } => match req.first(name) {
                Some(v) => v.trim_ascii().to_vec(),
                None => return Ok(None),
            },
            KeySource::Query { name } => {
                let path = req.first(":path").unwrap_or_default();
                match query_value(&path, name) {
                    Some(v) => v.to_vec(),
                    None => return Ok(None),
                }
            }
        };
        self.learned(value)
    }

    fn learned(&self, value: Vec<u8>) -> Result<Option<Learned>, Miss> {
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() > MAX_LEARNED_LEN {
            return Err(Miss::TooLong);
        }
        Ok(Some(Learned {
            id: self.hasher.id(&value),
            value,
        }))
    }

    /// The application's new session id, from a `Set-Cookie` of the response (`learn_from:
    /// cookie` only); a `Set-Cookie` that deletes the cookie starts nothing.
    fn learned_from_response(&self, resp: &mut dyn Response, now_ms: u64) -> Option<Learned> {
        let KeySource::Cookie { name, .. } = &self.source else {
            return None;
        };
        resp.first("set-cookie")?;
        let value = resp
            .all("set-cookie")
            .iter()
            .find_map(|h| cookies::set_cookie_value(h, name, now_ms))
            .map(<[u8]>::to_vec)?;
        self.learned(value).ok().flatten()
    }

    pub fn on_response(
        &self,
        state: &TableState,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let (guard_ops, removed) = match &self.source {
            KeySource::Cookie { companion, .. } => guard_set_cookies(resp, &[&companion.name]),
            _ => (Vec::new(), 0),
        };
        let action = match &state.found {
            Found::OutsidePath => ResponseAction::new(Decision::OutsidePath),
            Found::New(miss) => self.new_session(state, *miss, resp, store, now_ms, entropy),
            Found::Pinned(pin) => self.pinned(state, pin, resp, store, now_ms, entropy),
        };
        action.after_guard(guard_ops, removed)
    }

    fn new_session(
        &self,
        state: &TableState,
        miss: Miss,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let endpoint = match Outcome::classify(resp) {
            Outcome::Served { endpoint, .. } => endpoint,
            Outcome::Unreachable { .. } => {
                return ResponseAction::new(Decision::Unserved {
                    details: "unreachable".into(),
                })
            }
            Outcome::Local { details } => {
                return ResponseAction::new(Decision::Unserved { details })
            }
        };
        let learned = self.learned_from_response(resp, now_ms);
        // The id the application just issued goes where the application issued it; the id
        // the request carried (if any) follows the session too.
        let keys: Vec<&Learned> = learned.iter().chain(state.key.as_ref()).collect();
        if keys.is_empty() {
            return ResponseAction::new(Decision::Unbound { miss });
        }
        let pin = Pin::new(
            &endpoint,
            cluster_of(&self.routing, resp).as_deref(),
            now_ms,
        );
        let decision = Decision::Issued {
            endpoint: pin.endpoint.clone(),
            miss,
        };
        self.bind(store, &keys, &pin, false, now_ms, decision, entropy)
    }

    fn pinned(
        &self,
        state: &TableState,
        pin: &Pin,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let outcome = Outcome::classify(resp);
        match verdict(pin, &outcome, &self.routing) {
            Verdict::Hit => self.hit(state, pin, resp, store, now_ms, entropy),
            Verdict::Moved { to } => {
                let moved = pin.moved(to, cluster_of(&self.routing, resp).as_deref(), now_ms);
                let learned = self.learned_from_response(resp, now_ms);
                let keys: Vec<&Learned> = learned.iter().chain(state.key.as_ref()).collect();
                let decision = Decision::Rebound {
                    from: pin.endpoint.clone(),
                    to: moved.endpoint.clone(),
                };
                // A session that moves is one in use: it keeps its protection from floods.
                self.bind(store, &keys, &moved, true, now_ms, decision, entropy)
            }
            Verdict::Refuse => refusal(&self.routing, &pin.endpoint),
            Verdict::LetGo => {
                let mut action = ResponseAction::new(Decision::Dropped {
                    endpoint: pin.endpoint.clone(),
                });
                if let Some(key) = &state.key {
                    if let Ok(r) = self.table.remove(store, &key.id, &pin.endpoint, now_ms) {
                        action.writes.add(&r);
                    }
                }
                if let KeySource::Cookie { companion, .. } = &self.source {
                    action.ops.push(HeaderOp::add(
                        "set-cookie",
                        cookies::expired(&companion.name, &companion.attributes),
                    ));
                }
                action
            }
            Verdict::Kept { details } => ResponseAction::new(Decision::Kept {
                endpoint: pin.endpoint.clone(),
                details: details.to_string(),
            }),
        }
    }

    fn hit(
        &self,
        state: &TableState,
        pin: &Pin,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        // The application may have started a new session of its own on the same endpoint.
        if let Some(learned) = self.learned_from_response(resp, now_ms) {
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
                return self.bind(store, &[&learned], &fresh, false, now_ms, decision, entropy);
            }
        }
        // A binding's first return is always recorded: eviction keeps sessions that came back
        // ahead of ids seen once (a flood of new clients), whatever the interval.
        let due = !state.returned
            || state.adopted
            || self.lifetimes.touch_due(pin, now_ms, Some(LRU_TOUCH_MS));
        let decision = Decision::Hit {
            endpoint: pin.endpoint.clone(),
            refreshed: due,
        };
        let Some(key) = state.key.as_ref().filter(|_| due) else {
            return ResponseAction::new(decision);
        };
        if state.adopted || matches!(self.source, KeySource::Cookie { .. }) {
            // This Envoy learns a binding another replica made; a companion cookie is sealed
            // again with the new last-seen time.
            return self.bind(
                store,
                &[key],
                &pin.seen(now_ms),
                true,
                now_ms,
                decision,
                entropy,
            );
        }
        // A lost touch only shortens the session by one interval: no retry storm.
        let mut action = ResponseAction::new(decision);
        if let Ok(r) = self.table.touch(store, &key.id, &pin.endpoint, now_ms) {
            action.writes.add(&r);
        }
        action
    }

    /// Writes `pin` for every key; with a companion cookie, hands the client a sealed copy
    /// bound to the first key.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &self,
        store: &dyn Store,
        keys: &[&Learned],
        pin: &Pin,
        returned: bool,
        now_ms: u64,
        decision: Decision,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let mut writes = WriteReport::default();
        for key in keys {
            let binding = Binding {
                id: key.id,
                pin: pin.clone(),
                returned,
            };
            match self.table.put(store, &binding, now_ms) {
                Ok(report) => writes.add(&report),
                Err(e) => {
                    let mut failed = ResponseAction::new(Decision::WriteFailed(e));
                    failed.writes = writes;
                    return failed;
                }
            }
        }
        let mut action = ResponseAction::new(decision);
        action.writes = writes;
        if let (KeySource::Cookie { companion, .. }, Some(first)) = (&self.source, keys.first()) {
            match companion.sealer.seal(pin, &first.value, entropy) {
                Ok(token) => action.ops.push(HeaderOp::add(
                    "set-cookie",
                    cookies::set_cookie(
                        &companion.name,
                        &token,
                        &companion.attributes,
                        max_age_s(&companion.attributes, self.lifetimes, pin, now_ms),
                    ),
                )),
                // The binding is written: this Envoy pins the session; only replicas will not.
                Err(e) => action.decision = Decision::SealFailed(e),
            }
        }
        action
    }
}

/// The client's address. With `trusted_hops` 0: Envoy's downstream address (the peer, with
/// the HTTP connection manager's `use_remote_address: true`). With N: the `X-Forwarded-For`
/// entry N hops from the right. Envoy with `use_remote_address: true` has appended the peer as
/// the rightmost entry (hop 0), so hop N is the address the outermost of N trusted proxies
/// saw; entries further left are the client's to invent and never count. Falls back to the
/// peer when the header has too few entries or a malformed one.
pub fn client_ip(req: &mut dyn Request, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops > 0 && req.first("x-forwarded-for").is_some() {
        let xff = req.all("x-forwarded-for");
        if !xff.is_empty() {
            let joined = xff.join(&b","[..]);
            let from_xff = joined
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
