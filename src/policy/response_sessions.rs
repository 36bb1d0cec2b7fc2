//! Sessions the backend starts (`learn_from: response_header`): a response header names the
//! session (MCP's `Mcp-Session-Id`), and the client sends it back on every request.
//!
//! By default the id travels in an envelope: tether replaces the backend's value with a sealed
//! token holding the id and the pin, opens it on each request, sets the pin and hands the
//! backend its own id again. Nothing is stored, and every Envoy with the keys routes the session
//! alike. With `envelope: false` the client gets the backend's value as it is, and this Envoy's
//! binding table keeps id → endpoint.
//!
//! The application decides a session's life: only an answer in 2xx starts or moves one; a
//! DELETE of the session that its endpoint answers in 2xx ends it, and so does a 404 from the
//! endpoint (it has forgotten the session: the client starts a new one).

use super::{
    cluster_of, pin_ops, refusal, verdict, Decision, EndReason, Found, Miss, ResponseAction,
    Verdict,
};
use crate::config::{Kind, LearnSource, Routing, SessionType, Settings};
use crate::entropy::Entropy;
use crate::http::{HeaderOp, Request, Response};
use crate::outcome::Outcome;
use crate::pin::{Lifetimes, Pin};
use crate::seal::{Carrier, Sealer, MAX_PAYLOAD_LEN};
use crate::secret::{IdHasher, Key};
use crate::table::{Binding, BindingTable, Lookup, SessionId, Store, TableShape, WriteReport};
use std::rc::Rc;

/// Longest id tether takes from a response: the longest an envelope carries. A longer one is
/// left as the backend sent it and pins nothing (`tether_ids_too_long`).
pub const MAX_RESPONSE_ID_LEN: usize = MAX_PAYLOAD_LEN;

/// Without an idle timeout, how often a binding's last use is written back (for eviction).
const LRU_TOUCH_MS: u64 = super::table_sessions::LRU_TOUCH_MS;

pub struct ResponseSessions {
    session_name: String,
    /// The response header that names the session (lower case).
    header: String,
    /// The request header the client sends it back in (lower case).
    request_header: String,
    /// `Some`: envelopes; `None`: the backend's ids as they are, bound in `table`.
    sealer: Option<Sealer>,
    /// Bindings (`envelope: false`), or, for envelopes with an idle timeout, when this Envoy last
    /// saw each session (envelopes cannot be refreshed: clients keep the value `initialize` gave).
    table: Option<BindingTable>,
    hasher: IdHasher,
    lifetimes: Lifetimes,
    routing: Routing,
}

/// What the request phase found, for the response phase and the end of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseState {
    pub found: Found,
    /// The backend's id of the session the request carried (from its envelope, or as sent).
    pub id: Option<Rc<[u8]>>,
    /// The envelope the request carried, handed back wherever the backend names the session.
    pub envelope: Option<Vec<u8>>,
    /// The table binding had come back before (its first return is written at once).
    pub returned: bool,
    /// The request is a DELETE of its session: a 2xx from its endpoint ends the session.
    pub deletes: bool,
}

impl ResponseSessions {
    pub fn new(settings: &Settings, process_secret: &Key) -> Option<ResponseSessions> {
        let Kind::Learn {
            source:
                LearnSource::ResponseHeader {
                    header,
                    request_header,
                    envelope,
                },
            max_sessions,
        } = &settings.kind
        else {
            return None;
        };
        let keys = if settings.keys.is_empty() {
            vec![*process_secret]
        } else {
            settings.keys.clone()
        };
        let sealer =
            envelope.then(|| Sealer::new(&keys, Carrier::Envelope, &settings.session_name));
        let keeps_table = !envelope || settings.lifetimes.idle_ms.is_some();
        let table = keeps_table.then(|| {
            BindingTable::new(
                &settings.session_name,
                TableShape {
                    capacity: *max_sessions,
                    lifetimes: settings.lifetimes,
                },
            )
        });
        Some(ResponseSessions {
            session_name: settings.session_name.clone(),
            header: header.clone(),
            request_header: request_header.clone(),
            sealer,
            table,
            hasher: IdHasher::new(process_secret),
            lifetimes: settings.lifetimes,
            routing: settings.routing.clone(),
        })
    }

    pub fn session_type(&self) -> SessionType {
        SessionType::Learn
    }

    pub fn session_name(&self) -> &str {
        &self.session_name
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn table(&self) -> Option<&BindingTable> {
        self.table.as_ref()
    }

    /// Whether an unknown value is a forged or foreign token (envelopes), or simply an id this
    /// Envoy has not bound.
    pub fn seals(&self) -> bool {
        self.sealer.is_some()
    }

    fn id_of(&self, id: &[u8]) -> SessionId {
        self.hasher.id(id)
    }

    pub fn on_request(
        &self,
        req: &mut dyn Request,
        store: &dyn Store,
        now_ms: u64,
    ) -> (ResponseState, Vec<HeaderOp<'_>>) {
        let mut ops = Vec::with_capacity(4);
        let mut state = ResponseState {
            found: Found::New(Miss::NoToken),
            id: None,
            envelope: None,
            returned: false,
            deletes: false,
        };
        let Some(value) = req.first(&self.request_header) else {
            return (state, ops);
        };
        let value = value.trim_ascii();
        if value.is_empty() {
            return (state, ops);
        }
        state.found = match &self.sealer {
            Some(sealer) => match sealer.open_carrying(value, b"") {
                // A forged, altered or foreign envelope passes to the backend as it came,
                // which answers as it does for a session it does not know.
                None => Found::New(Miss::Unknown),
                Some((pin, id)) => {
                    let (pin, expired) = self.envelope_pin(store, pin, &id, now_ms);
                    if expired {
                        Found::New(Miss::Expired)
                    } else {
                        // The backend gets its own id back; the client never sees it.
                        ops.push(HeaderOp::set(&self.request_header, id.to_vec()));
                        state.envelope = Some(value.to_vec());
                        state.id = Some(id);
                        Found::Pinned(pin)
                    }
                }
            },
            None if value.len() > MAX_RESPONSE_ID_LEN => Found::New(Miss::TooLong),
            None => {
                let id: Rc<[u8]> = Rc::from(value);
                let key = self.id_of(&id);
                let found = match self
                    .table
                    .as_ref()
                    .map(|t| (t, t.lookup(store, &key, now_ms)))
                {
                    Some((table, Lookup::Live(b))) => {
                        // For the end of its stream (the lookup itself is not skipped: the
                        // binding is the session, and another worker may have moved it).
                        table.remember(store, &key, Some(b.pin.last_seen_ms));
                        state.returned = b.returned;
                        Found::Pinned(b.pin)
                    }
                    Some((_, Lookup::Expired(_))) => Found::New(Miss::Expired),
                    Some((_, Lookup::Unknown)) | None => Found::New(Miss::Unknown),
                };
                state.id = Some(id);
                found
            }
        };
        if let Found::Pinned(pin) = &state.found {
            pin_ops(&self.routing, pin, &mut ops);
            // Read here, not in the response phase: Envoy lets go of the request's headers once
            // the request phase is over, and `request.method` is read from them too. A DELETE
            // that ends a session carries no body, so tool calls (POSTs with one) skip the read.
            state.deletes = !req.has_body()
                && req
                    .first(":method")
                    .is_some_and(|m| m.eq_ignore_ascii_case(b"DELETE"));
        }
        (state, ops)
    }

    /// An envelope's pin as this Envoy knows it, and whether it has expired: the absolute
    /// lifetime counts from the envelope itself; the idle one from the later of the envelope's
    /// last use and this Envoy's record of the session (clients keep the envelope `initialize`
    /// gave them, so only Envoy can know the last use). A session this Envoy has no record of
    /// (another replica served it, or it restarted) is not taken for idle: it is never let go
    /// for lack of a record, and its server ends it when it forgets it (a 404).
    fn envelope_pin(&self, store: &dyn Store, pin: Pin, id: &[u8], now_ms: u64) -> (Pin, bool) {
        let absolute = Lifetimes {
            absolute_ms: self.lifetimes.absolute_ms,
            idle_ms: None,
        };
        if absolute.is_expired(&pin, now_ms) {
            return (pin, true);
        }
        let Some(table) = &self.table else {
            let expired = self.lifetimes.is_expired(&pin, now_ms);
            return (pin, expired);
        };
        let key = self.id_of(id);
        // A record this worker knows fresh cannot have expired, and is not due to be written:
        // the request costs no shared-data read.
        if let Some(seen) = table.recall(store, &key) {
            let seen = pin.seen(seen);
            if !self.lifetimes.touch_due(&seen, now_ms, Some(LRU_TOUCH_MS)) {
                return (seen, false);
            }
        }
        match table.lookup(store, &key, now_ms) {
            Lookup::Live(b) if b.pin.endpoint == pin.endpoint => {
                table.remember(store, &key, Some(b.pin.last_seen_ms));
                (pin.seen(b.pin.last_seen_ms), false)
            }
            Lookup::Expired(b) if b.pin.endpoint == pin.endpoint => {
                let seen = pin.seen(b.pin.last_seen_ms);
                let expired = self.lifetimes.is_expired(&seen, now_ms);
                (seen, expired)
            }
            _ => (pin, false),
        }
    }

    pub fn on_response(
        &self,
        state: &ResponseState,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let outcome = Outcome::classify(resp);
        let named = resp.first(&self.header);
        match &state.found {
            Found::Pinned(pin) => {
                self.pinned(state, pin, &outcome, named, resp, store, now_ms, entropy)
            }
            Found::New(miss) => match &outcome {
                Outcome::Served { endpoint, status } if (200..300).contains(status) => {
                    let Some(id) = named.as_deref().map(<[u8]>::trim_ascii) else {
                        return ResponseAction::new(Decision::Unbound { miss: *miss });
                    };
                    if id.is_empty() {
                        return ResponseAction::new(Decision::Unbound { miss: *miss });
                    }
                    if id.len() > MAX_RESPONSE_ID_LEN {
                        return ResponseAction::new(Decision::Unbound {
                            miss: Miss::TooLong,
                        });
                    }
                    let pin =
                        Pin::new(endpoint, cluster_of(&self.routing, resp).as_deref(), now_ms);
                    let decision = Decision::Issued {
                        endpoint: pin.endpoint.clone(),
                        miss: *miss,
                    };
                    self.bind(store, id, &pin, false, now_ms, decision, entropy)
                }
                // A session the response refuses (an error), or none named: nothing recorded.
                Outcome::Served { .. } => ResponseAction::new(Decision::Unbound { miss: *miss }),
                Outcome::Unreachable { .. } => ResponseAction::new(Decision::Unserved {
                    details: "unreachable".into(),
                }),
                Outcome::Local { details } => ResponseAction::new(Decision::Unserved {
                    details: details.clone(),
                }),
            },
            Found::OutsidePath => ResponseAction::new(Decision::OutsidePath),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pinned(
        &self,
        state: &ResponseState,
        pin: &Pin,
        outcome: &Outcome,
        named: Option<Vec<u8>>,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let status = match outcome {
            Outcome::Served { status, .. } => *status,
            _ => 0,
        };
        let ok = (200..300).contains(&status);
        let id = state.id.as_deref().unwrap_or_default();
        // The backend named another session than the request's: a new one on this endpoint.
        let other = named
            .as_deref()
            .map(<[u8]>::trim_ascii)
            .filter(|named| !named.is_empty() && *named != id);
        let verdict = verdict(pin, outcome, &self.routing);
        let mut action = match verdict {
            Verdict::Hit if status == 404 || (ok && state.deletes) => {
                let reason = if status == 404 {
                    EndReason::NotFound
                } else {
                    EndReason::Deleted
                };
                let mut action = ResponseAction::new(Decision::Ended {
                    endpoint: pin.endpoint.clone(),
                    reason,
                });
                self.forget(store, id, pin, now_ms, &mut action);
                action
            }
            Verdict::Hit => match other {
                Some(new_id) if ok && new_id.len() <= MAX_RESPONSE_ID_LEN => {
                    let fresh = Pin {
                        created_ms: now_ms,
                        last_seen_ms: now_ms,
                        ..pin.clone()
                    };
                    let decision = Decision::Issued {
                        endpoint: pin.endpoint.clone(),
                        miss: Miss::NoToken,
                    };
                    self.bind(store, new_id, &fresh, false, now_ms, decision, entropy)
                }
                _ => self.hit(state, pin, store, now_ms),
            },
            Verdict::Moved { to } if ok => {
                let moved = pin.moved(to, cluster_of(&self.routing, resp).as_deref(), now_ms);
                let decision = Decision::Rebound {
                    from: pin.endpoint.clone(),
                    to: moved.endpoint.clone(),
                };
                let id = other.unwrap_or(id);
                self.bind(store, id, &moved, true, now_ms, decision, entropy)
            }
            // The pinned endpoint is gone and another answered as it does for a session it does
            // not know: the client starts a new one, load-balanced.
            Verdict::Moved { .. } | Verdict::LetGo => {
                let mut action = ResponseAction::new(Decision::Dropped {
                    endpoint: pin.endpoint.clone(),
                });
                self.forget(store, id, pin, now_ms, &mut action);
                action
            }
            Verdict::Refuse => refusal(&self.routing, &pin.endpoint),
            Verdict::Kept { details } => ResponseAction::new(Decision::Kept {
                endpoint: pin.endpoint.clone(),
                details: details.to_string(),
            }),
        };
        // The client never sees the backend's own id: wherever the backend names the session
        // (a client may take a session id from any response, the answer to its DELETE too) and
        // no new envelope was sealed, the one the client sent goes back.
        if let (true, Some(envelope)) = (named.is_some(), &state.envelope) {
            if !action.ops.iter().any(|op| op.name() == self.header) {
                action
                    .ops
                    .push(HeaderOp::set(&self.header, envelope.clone()));
            }
        }
        action
    }

    /// A hit: this Envoy's record of the session's use is written when due.
    fn hit(
        &self,
        state: &ResponseState,
        pin: &Pin,
        store: &dyn Store,
        now_ms: u64,
    ) -> ResponseAction<'_> {
        let id = state.id.as_deref().unwrap_or_default();
        // A binding's first return is written at once: eviction keeps sessions that came back.
        let first_return = self.sealer.is_none() && !state.returned;
        let due = self.table.is_some()
            && (first_return || self.lifetimes.touch_due(pin, now_ms, Some(LRU_TOUCH_MS)));
        let mut action = ResponseAction::new(Decision::Hit {
            endpoint: pin.endpoint.clone(),
            refreshed: due,
        });
        if due {
            self.record(store, id, pin, now_ms, &mut action);
        }
        action
    }

    /// This Envoy's record that the session was used now: the binding touched (or, for an
    /// envelope seen here for the first time, written).
    fn record(
        &self,
        store: &dyn Store,
        id: &[u8],
        pin: &Pin,
        now_ms: u64,
        action: &mut ResponseAction<'_>,
    ) {
        let Some(table) = &self.table else {
            return;
        };
        let key = self.id_of(id);
        let report = match table.lookup(store, &key, now_ms) {
            Lookup::Live(b) if b.pin.endpoint == pin.endpoint => {
                table.touch(store, &key, &pin.endpoint, now_ms)
            }
            _ if self.sealer.is_some() => table.put(
                store,
                &Binding {
                    id: key,
                    pin: pin.seen(now_ms),
                    returned: true,
                },
                now_ms,
            ),
            _ => return,
        };
        if let Ok(r) = report {
            table.remember(store, &key, Some(now_ms));
            action.writes.add(&r);
        }
    }

    fn forget(
        &self,
        store: &dyn Store,
        id: &[u8],
        pin: &Pin,
        now_ms: u64,
        action: &mut ResponseAction<'_>,
    ) {
        if let Some(table) = &self.table {
            let key = self.id_of(id);
            table.remember(store, &key, None);
            if let Ok(r) = table.remove(store, &key, &pin.endpoint, now_ms) {
                action.writes.add(&r);
            }
        }
    }

    /// Starts (or moves) the session `id` on `pin`: its envelope replaces the backend's value in
    /// the response, or the table binds the id.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &self,
        store: &dyn Store,
        id: &[u8],
        pin: &Pin,
        returned: bool,
        now_ms: u64,
        decision: Decision,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        let mut action = ResponseAction::new(decision);
        if let Some(sealer) = &self.sealer {
            match sealer.seal_carrying(pin, id, b"", entropy) {
                Ok(envelope) => action.ops.push(HeaderOp::set(&self.header, envelope)),
                Err(e) => {
                    // The backend's id must not reach the client as the session: it would
                    // pin nothing, and the client would keep it.
                    action.ops.push(HeaderOp::remove(&self.header));
                    action.decision = Decision::SealFailed(e);
                    return action;
                }
            }
        }
        if let Some(table) = &self.table {
            let binding = Binding {
                id: self.id_of(id),
                pin: pin.clone(),
                returned,
            };
            match table.put(store, &binding, now_ms) {
                Ok(r) => {
                    table.remember(store, &binding.id, Some(pin.last_seen_ms));
                    action.writes.add(&r);
                }
                // An envelope pins without the record; a table binding is the session.
                Err(e) if self.sealer.is_none() => action.decision = Decision::WriteFailed(e),
                Err(_) => {}
            }
        }
        action
    }

    /// What keeps the session of a stream still open fresh: `None` when nothing needs to (no
    /// idle timeout, or the request is not pinned to a binding of the table).
    pub fn hold(&self, state: &ResponseState, now_ms: u64) -> Option<Hold> {
        let (Some(table), Found::Pinned(pin), Some(id)) = (&self.table, &state.found, &state.id)
        else {
            return None;
        };
        let every_ms = self.lifetimes.touch_interval_ms()?.max(1);
        Some(Hold {
            table: table.clone(),
            key: self.id_of(id),
            endpoint: pin.endpoint.as_ref().into(),
            every_ms,
            last_ms: pin.last_seen_ms.min(now_ms),
            touched: Touched::default(),
        })
    }

    /// With an idle timeout, a stream's end is a use of its session.
    pub fn watches_stream_end(&self) -> bool {
        self.table.is_some() && self.lifetimes.idle_ms.is_some()
    }

    /// The end of a request's stream: a long one (server-sent events) was activity until now,
    /// so this Envoy's record of the session counts from its end. The write it makes, if any,
    /// also lets expired bindings of the bucket go: its report says what the table lost.
    pub fn on_stream_end(
        &self,
        state: &ResponseState,
        store: &dyn Store,
        now_ms: u64,
    ) -> WriteReport {
        let (Some(table), Found::Pinned(pin), Some(id)) = (&self.table, &state.found, &state.id)
        else {
            return WriteReport::default();
        };
        if !self.watches_stream_end() {
            return WriteReport::default();
        }
        let key = self.id_of(id);
        // Most streams end within the touch interval of the record's last write (their own
        // request's, or a recent one's): the record is fresh enough, and nothing is written.
        // Without this worker's memory of it (a store that keeps none, or an entry another
        // session took), the record was at least as fresh as the request found it.
        let seen = table.recall(store, &key).unwrap_or(pin.last_seen_ms);
        if !self.lifetimes.touch_due(&pin.seen(seen), now_ms, None) {
            return WriteReport::default();
        }
        match table.touch(store, &key, &pin.endpoint, now_ms) {
            Ok(r) => {
                table.remember(store, &key, Some(now_ms));
                r
            }
            Err(_) => WriteReport::default(),
        }
    }
}

/// An open stream's claim on its session. A stream is activity while it lasts (an MCP client's
/// GET of server-sent events may stay open, silent, far longer than the idle timeout), but a
/// request of the session may arrive on another worker, which knows only the record: so the
/// adapter's timer touches the record for each open stream, as often as requests would. It
/// holds no `Rc`: the native build's timer runs on a thread of its own.
#[derive(Debug, Clone)]
pub struct Hold {
    table: BindingTable,
    key: SessionId,
    endpoint: Box<str>,
    every_ms: u64,
    last_ms: u64,
    touched: Touched,
}

/// A `WriteReport` that can cross threads, until the stream's end hands it over.
#[derive(Debug, Clone, Default)]
struct Touched {
    cas_retries: usize,
    evicted_live: usize,
    bindings_delta: i64,
    endpoint_deltas: Vec<(Box<str>, i64)>,
}

impl Hold {
    /// The timer's call: the record touched when a request at `now_ms` would touch it. The
    /// binding may be gone (the session ended, or was evicted): then nothing is written.
    pub fn tick(&mut self, store: &dyn Store, now_ms: u64) {
        if now_ms.saturating_sub(self.last_ms) < self.every_ms {
            return;
        }
        self.last_ms = now_ms;
        if let Ok(r) = self.table.touch(store, &self.key, &self.endpoint, now_ms) {
            self.table.remember(store, &self.key, Some(now_ms));
            let t = &mut self.touched;
            t.cas_retries += r.cas_retries;
            t.evicted_live += r.evicted_live;
            t.bindings_delta += r.bindings_delta;
            for (endpoint, delta) in r.endpoint_deltas {
                match t.endpoint_deltas.iter_mut().find(|(e, _)| **e == *endpoint) {
                    Some((_, d)) => *d += delta,
                    None => t.endpoint_deltas.push((endpoint.as_ref().into(), delta)),
                }
            }
        }
    }

    /// What the timer's writes changed in the table, for the stream's end to report.
    pub fn into_report(self) -> WriteReport {
        let t = self.touched;
        let mut report = WriteReport {
            cas_retries: t.cas_retries,
            evicted_live: t.evicted_live,
            bindings_delta: t.bindings_delta,
            endpoint_deltas: Vec::new(),
        };
        let deltas = t
            .endpoint_deltas
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .map(|(e, d)| (Rc::from(e), d));
        report.endpoint_deltas.extend(deltas);
        report
    }
}
