//! The session families, each compiled once from its configuration and each with its own
//! request and response paths:
//! - token sessions (`cookie`, `header`): tether issues a sealed token that carries the pin
//!   itself; nothing is stored, and every Envoy with the keys reads the same pin;
//! - table sessions (`learn`, `source_ip`): the session key is the application's or the
//!   client's (or the client's address); tether keeps key → endpoint in the binding table.
//!
//! What both share lives here: what a request found, the headers that pin it, the verdict on a
//! pinned session once the response is classified (`outcome`), and the decision reported.

mod response_sessions;
mod table_sessions;
mod token_sessions;

pub use response_sessions::{Hold, ResponseSessions, ResponseState, MAX_RESPONSE_ID_LEN};
pub use table_sessions::{client_ip, TableSessions, TableState, MAX_LEARNED_LEN};
pub use token_sessions::{TokenSessions, TokenState};

use crate::config::{Routing, SessionType, Settings, STRICT_HEADER};
use crate::entropy::Entropy;
use crate::http::{HeaderOp, Request, Response};
use crate::outcome::Outcome;
use crate::pin::Pin;
use crate::seal::SealError;
use crate::secret::Key;
use crate::table::{BindingTable, Store, WriteError, WriteReport};
use std::fmt;
use std::rc::Rc;

/// What the request phase found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No usable session: the load balancer chooses, the response binds.
    New(Miss),
    /// The session is pinned; the request names `pin.endpoint` to Envoy.
    Pinned(Pin),
    /// The request is outside the path of the policy's cookie: a browser would not have sent
    /// the cookie with it, so tether neither pins nor issues (Envoy's `stateful_session` treats
    /// the cookie's path the same way).
    OutsidePath,
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
    /// A learned id longer than `MAX_LEARNED_LEN`: never bound.
    TooLong,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Miss::NoToken => "no_session",
            Miss::Unknown => "unknown_session",
            Miss::Expired => "expired",
            Miss::TooLong => "id_too_long",
        })
    }
}

/// What the response phase decided, for the log line and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new session was bound to the endpoint that served it.
    Issued { endpoint: Rc<str>, miss: Miss },
    /// The pinned endpoint served the request.
    Hit { endpoint: Rc<str>, refreshed: bool },
    /// The pinned endpoint could not be reached (or has left the cluster) and the route's retry
    /// reached another: the session moved there.
    Rebound { from: Rc<str>, to: Rc<str> },
    /// The pinned endpoint did not serve and the policy is strict: refused.
    Refused { endpoint: Rc<str> },
    /// No endpoint of the session's cluster could be reached: the session was let go.
    Dropped { endpoint: Rc<str> },
    /// The application ended the session (`learn_from: response_header`).
    Ended {
        endpoint: Rc<str>,
        reason: EndReason,
    },
    /// Envoy answered a pinned request itself (a timeout, an overflow, a reset after the
    /// request went out): the endpoint lives, the session stays as it was.
    Kept { endpoint: Rc<str>, details: String },
    /// A new session that no endpoint answered: nothing recorded.
    Unserved { details: String },
    /// An endpoint answered but nothing identifies the session (no learned id, or one too
    /// long): nothing recorded.
    Unbound { miss: Miss },
    /// Outside the cookie's path: tether did nothing.
    OutsidePath,
    /// The binding could not be written.
    WriteFailed(WriteError),
    /// No token could be sealed.
    SealFailed(SealError),
}

/// Why the application ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A DELETE of the session, answered in 2xx by its endpoint.
    Deleted,
    /// Its endpoint answered 404: it no longer knows the session.
    NotFound,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Deleted => "deleted",
            EndReason::NotFound => "not_found",
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
            Decision::Dropped { endpoint } => write!(f, "decision=dropped endpoint={endpoint}"),
            Decision::Ended { endpoint, reason } => {
                write!(f, "decision=ended endpoint={endpoint} reason={reason}")
            }
            Decision::Kept { endpoint, details } => {
                write!(f, "decision=kept endpoint={endpoint} details={details}")
            }
            Decision::Unserved { details } => write!(f, "decision=unserved details={details}"),
            Decision::Unbound { miss } => write!(f, "decision=unbound reason={miss}"),
            Decision::OutsidePath => write!(f, "decision=outside_path"),
            Decision::WriteFailed(e) => write!(f, "decision=write_failed error={e}"),
            Decision::SealFailed(e) => write!(f, "decision=seal_failed error={e}"),
        }
    }
}

/// What the response phase does: the decision, the response's header changes (in order), a
/// strict refusal in place of the response, and what it wrote and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAction<'a> {
    pub decision: Decision,
    pub ops: Vec<HeaderOp<'a>>,
    /// Answer with this status and `Retry-After` seconds instead of the response.
    pub refuse: Option<(u16, u64)>,
    pub writes: WriteReport,
    /// `Set-Cookie` headers (or session headers) of the backend's that would have replaced
    /// tether's own, removed.
    pub backend_cookies_removed: usize,
}

impl ResponseAction<'_> {
    pub fn new<'a>(decision: Decision) -> ResponseAction<'a> {
        ResponseAction {
            decision,
            ops: Vec::new(),
            refuse: None,
            writes: WriteReport::default(),
            backend_cookies_removed: 0,
        }
    }
}

impl<'a> ResponseAction<'a> {
    /// The removals of the backend's copies of tether's header or cookie (`removed` of them)
    /// go before whatever the action adds of tether's own.
    pub(crate) fn after_guard(mut self, mut guard_ops: Vec<HeaderOp<'a>>, removed: usize) -> Self {
        if !guard_ops.is_empty() {
            guard_ops.append(&mut self.ops);
            self.ops = guard_ops;
        }
        self.backend_cookies_removed = removed;
        self
    }
}

/// A pinned session's fate, from the classified response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    /// Its endpoint answered.
    Hit,
    /// Another endpoint answered: the route's retry left the pinned one (which could not be
    /// reached), or the pinned one has left the cluster and the fallback chose.
    Moved { to: &'a str },
    /// Strict, and the pinned endpoint did not serve: refuse.
    Refuse,
    /// Rebalance, and no endpoint could be reached: let the session go.
    LetGo,
    /// Envoy answered itself: the session stays as it is.
    Kept { details: &'a str },
}

pub(crate) fn verdict<'a>(pin: &Pin, outcome: &'a Outcome, routing: &Routing) -> Verdict<'a> {
    let strict = routing.strict.is_some();
    match outcome {
        Outcome::Served { endpoint, .. } if **endpoint == *pin.endpoint => Verdict::Hit,
        Outcome::Served { .. } | Outcome::Unreachable { .. } if strict => Verdict::Refuse,
        Outcome::Served { endpoint, .. } => Verdict::Moved { to: endpoint },
        Outcome::Unreachable { .. } => Verdict::LetGo,
        Outcome::Local { details } => Verdict::Kept { details },
    }
}

/// The request headers that send a pinned request to its endpoint (and cluster), and keep a
/// strict session there.
pub(crate) fn pin_ops<'a>(routing: &'a Routing, pin: &Pin, ops: &mut Vec<HeaderOp<'a>>) {
    ops.push(HeaderOp::set(&routing.host_header, pin.endpoint.as_bytes()));
    if let (Some(header), Some(cluster)) = (&routing.cluster_header, &pin.cluster) {
        ops.push(HeaderOp::set(header, cluster.as_bytes()));
    }
    if routing.strict.is_some() {
        // No retry onto another endpoint; and a route matching STRICT_HEADER can make the
        // cluster refuse to fall back when the pinned endpoint has left it (envoy/envoy.yaml).
        ops.push(HeaderOp::set("x-envoy-max-retries", b"0".to_vec()));
        ops.push(HeaderOp::set(STRICT_HEADER, b"1".to_vec()));
    }
}

/// The refusal of a strict session.
pub(crate) fn refusal<'a>(routing: &Routing, endpoint: &Rc<str>) -> ResponseAction<'a> {
    let mut action = ResponseAction::new(Decision::Refused {
        endpoint: endpoint.clone(),
    });
    action.refuse = routing.strict.map(|s| (s.status, s.retry_after_s));
    action
}

/// The cluster a new or moved session records: read only when routes keep sessions in their
/// cluster (`upstream.cluster_header`), since it costs a property read.
pub(crate) fn cluster_of(routing: &Routing, resp: &mut dyn Response) -> Option<String> {
    routing.cluster_header.as_ref().and_then(|_| resp.cluster())
}

/// One compiled policy.
pub enum Policy {
    Token(TokenSessions),
    Table(TableSessions),
    Response(ResponseSessions),
}

/// What the request phase of a policy carries to its response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyState {
    Token(TokenState),
    Table(TableState),
    Response(ResponseState),
}

impl PolicyState {
    pub fn found(&self) -> &Found {
        match self {
            PolicyState::Token(s) => &s.found,
            PolicyState::Table(s) => &s.found,
            PolicyState::Response(s) => &s.found,
        }
    }
}

impl Policy {
    /// `process_secret`: the per-Envoy secret, which seals when `keys` is empty and keys the
    /// hash of table ids.
    pub fn new(settings: &Settings, process_secret: &Key) -> Policy {
        if let Some(tokens) = TokenSessions::new(settings, process_secret) {
            return Policy::Token(tokens);
        }
        match ResponseSessions::new(settings, process_secret) {
            Some(responses) => Policy::Response(responses),
            None => Policy::Table(TableSessions::new(settings, process_secret)),
        }
    }

    pub fn session_type(&self) -> SessionType {
        match self {
            Policy::Token(p) => p.session_type(),
            Policy::Table(p) => p.session_type(),
            Policy::Response(p) => p.session_type(),
        }
    }

    pub fn session_name(&self) -> &str {
        match self {
            Policy::Token(p) => p.session_name(),
            Policy::Table(p) => p.session_name(),
            Policy::Response(p) => p.session_name(),
        }
    }

    pub fn routing(&self) -> &Routing {
        match self {
            Policy::Token(p) => p.routing(),
            Policy::Table(p) => p.routing(),
            Policy::Response(p) => p.routing(),
        }
    }

    /// The binding table, for the policies that keep one.
    pub fn table(&self) -> Option<&BindingTable> {
        match self {
            Policy::Token(_) => None,
            Policy::Table(p) => Some(p.table()),
            Policy::Response(p) => p.table(),
        }
    }

    pub fn on_request(
        &self,
        req: &mut dyn Request,
        store: &dyn Store,
        now_ms: u64,
    ) -> (PolicyState, Vec<HeaderOp<'_>>) {
        match self {
            Policy::Token(p) => {
                let (state, ops) = p.on_request(req, now_ms);
                (PolicyState::Token(state), ops)
            }
            Policy::Table(p) => {
                let (state, ops) = p.on_request(req, store, now_ms);
                (PolicyState::Table(state), ops)
            }
            Policy::Response(p) => {
                let (state, ops) = p.on_request(req, store, now_ms);
                (PolicyState::Response(state), ops)
            }
        }
    }

    pub fn on_response(
        &self,
        state: &PolicyState,
        resp: &mut dyn Response,
        store: &dyn Store,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction<'_> {
        match (self, state) {
            (Policy::Token(p), PolicyState::Token(s)) => p.on_response(s, resp, now_ms, entropy),
            (Policy::Table(p), PolicyState::Table(s)) => {
                p.on_response(s, resp, store, now_ms, entropy)
            }
            (Policy::Response(p), PolicyState::Response(s)) => {
                p.on_response(s, resp, store, now_ms, entropy)
            }
            // A state always comes from the same policy's request phase.
            _ => ResponseAction::new(Decision::Unserved {
                details: "state_mismatch".into(),
            }),
        }
    }

    /// Whether the end of a request's stream matters to this policy (the adapter then reads
    /// the clock and calls `on_stream_end`).
    pub fn watches_stream_end(&self) -> bool {
        match self {
            Policy::Response(p) => p.watches_stream_end(),
            Policy::Token(_) | Policy::Table(_) => false,
        }
    }

    /// What keeps the session of a stream still open fresh (see `Hold`).
    pub fn hold(&self, state: &PolicyState, now_ms: u64) -> Option<Hold> {
        match (self, state) {
            (Policy::Response(p), PolicyState::Response(s)) => p.hold(s, now_ms),
            _ => None,
        }
    }

    /// The end of a request's stream (its last byte either way); what it wrote.
    pub fn on_stream_end(
        &self,
        state: &PolicyState,
        store: &dyn Store,
        now_ms: u64,
    ) -> WriteReport {
        match (self, state) {
            (Policy::Response(p), PolicyState::Response(s)) => p.on_stream_end(s, store, now_ms),
            _ => WriteReport::default(),
        }
    }

    /// Whether an unknown value of this policy is a token that did not open (forged, altered,
    /// another key), or just an id this Envoy has not bound.
    pub fn seals_its_sessions(&self) -> bool {
        match self {
            Policy::Token(_) => true,
            Policy::Table(_) => false,
            Policy::Response(p) => p.seals(),
        }
    }
}

#[cfg(test)]
mod response_tests;
#[cfg(test)]
mod tests;
