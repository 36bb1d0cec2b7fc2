//! The decisions, free of any host: what a request's session is, and what its response must
//! record and issue. The proxy-wasm adapter (`filter`) feeds these functions what it read from
//! Envoy and carries out what they return.

use crate::config::{LifetimeType, Settings};
use crate::cookies;
use crate::table::{Binding, BindingTable, Lifetimes, Lookup, Store, WriteError, DEFAULT_CAPACITY};
use crate::token::{Entropy, SessionId};
use std::fmt;

pub struct Engine {
    pub settings: Settings,
    pub table: BindingTable,
}

/// What the request phase found; carried to the response phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// No usable session: the load balancer chooses, the response binds.
    New(Miss),
    /// The session is bound to `binding.endpoint`; the host header was set to it.
    Pinned(Binding),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No cookie of ours.
    NoToken,
    /// A token we do not know: never issued, forgotten, or evicted.
    Unknown,
    /// A token whose session outlived its idle or absolute lifetime.
    Expired,
}

/// What the response phase did, for the log line and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAction {
    pub decision: Decision,
    /// A Set-Cookie header value to add to the response.
    pub set_cookie: Option<String>,
    pub cas_retries: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new session was bound to the endpoint that served it.
    Issued {
        id: SessionId,
        endpoint: String,
        miss: Miss,
    },
    /// The pinned endpoint served the request.
    Hit {
        id: SessionId,
        endpoint: String,
        touched: bool,
    },
    /// The pinned endpoint did not serve (it died; a retry went elsewhere): the session moved.
    Rebound {
        old: SessionId,
        id: SessionId,
        from: String,
        to: String,
    },
    /// No upstream answered (a local reply): nothing to record.
    Unserved,
    /// The binding could not be written (shared data refused, or CAS lost every time).
    WriteFailed(WriteError),
    /// The host gave no randomness: no session id could be made.
    NoEntropy,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Miss::NoToken => "no_token",
            Miss::Unknown => "unknown_token",
            Miss::Expired => "expired",
        })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Issued { id, endpoint, miss } => {
                write!(
                    f,
                    "decision=new session={id:?} endpoint={endpoint} reason={miss}"
                )
            }
            Decision::Hit {
                id,
                endpoint,
                touched,
            } => {
                write!(
                    f,
                    "decision=hit session={id:?} endpoint={endpoint} touched={touched}"
                )
            }
            Decision::Rebound { old, id, from, to } => {
                write!(
                    f,
                    "decision=rebind session={old:?} new_session={id:?} from={from} to={to}"
                )
            }
            Decision::Unserved => write!(f, "decision=unserved"),
            Decision::WriteFailed(e) => write!(f, "decision=write_failed error={e:?}"),
            Decision::NoEntropy => write!(f, "decision=no_entropy"),
        }
    }
}

impl Engine {
    pub fn new(settings: Settings) -> Self {
        let lifetimes = Lifetimes {
            absolute_ms: settings.absolute_timeout_ms,
            idle_ms: settings.idle_timeout_ms,
        };
        let table = BindingTable::new(&settings.session_name, DEFAULT_CAPACITY, lifetimes);
        Engine { settings, table }
    }

    /// Request phase: the session carried by the `Cookie` header, if any is live.
    pub fn on_request(
        &self,
        store: &dyn Store,
        cookie_header: Option<&[u8]>,
        now_ms: u64,
    ) -> RequestState {
        let Some(header) = cookie_header else {
            return RequestState::New(Miss::NoToken);
        };
        let ids = cookies::session_ids(header, &self.settings.session_name);
        if ids.is_empty() {
            return RequestState::New(Miss::NoToken);
        }
        let mut miss = Miss::Unknown;
        for id in &ids {
            match self.table.lookup(store, id, now_ms) {
                Lookup::Live(b) => return RequestState::Pinned(b),
                Lookup::Expired(_) => miss = Miss::Expired,
                Lookup::Unknown => {}
            }
        }
        RequestState::New(miss)
    }

    /// Response phase. `upstream` is the endpoint Envoy says handled the request;
    /// `from_upstream` tells whether the response really came from it (not a local reply),
    /// asked only when it matters because it costs a host call.
    pub fn on_response(
        &self,
        store: &dyn Store,
        state: &RequestState,
        upstream: Option<&str>,
        from_upstream: &mut dyn FnMut() -> bool,
        now_ms: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        let nothing = |decision| ResponseAction {
            decision,
            set_cookie: None,
            cas_retries: 0,
        };
        match (state, upstream) {
            (RequestState::Pinned(b), Some(served)) if served == b.endpoint => {
                let due = self
                    .table
                    .lifetimes()
                    .touch_interval_ms()
                    .is_some_and(|every| now_ms.saturating_sub(b.last_seen_ms) >= every);
                let mut cas_retries = 0;
                if due {
                    // A lost touch only shortens the session by one interval: no retry storm.
                    if let Ok(r) = self.table.touch(store, &b.id, &b.endpoint, now_ms) {
                        cas_retries = r.cas_retries;
                    }
                }
                let decision = Decision::Hit {
                    id: b.id,
                    endpoint: b.endpoint.clone(),
                    touched: due,
                };
                ResponseAction {
                    decision,
                    set_cookie: None,
                    cas_retries,
                }
            }
            (_, None) => nothing(Decision::Unserved),
            (_, Some(_)) if !from_upstream() => nothing(Decision::Unserved),
            (RequestState::New(miss), Some(served)) => {
                let Some(id) = SessionId::generate(entropy) else {
                    return nothing(Decision::NoEntropy);
                };
                let binding = Binding {
                    id,
                    endpoint: served.to_string(),
                    created_ms: now_ms,
                    last_seen_ms: now_ms,
                };
                let decision = Decision::Issued {
                    id,
                    endpoint: binding.endpoint.clone(),
                    miss: *miss,
                };
                self.bind(store, &binding, now_ms, decision)
            }
            (RequestState::Pinned(old), Some(served)) => {
                let Some(id) = SessionId::generate(entropy) else {
                    return nothing(Decision::NoEntropy);
                };
                // The session keeps its age (the absolute timeout still counts from its start).
                let binding = Binding {
                    id,
                    endpoint: served.to_string(),
                    created_ms: old.created_ms,
                    last_seen_ms: now_ms,
                };
                // Requests still carrying the old cookie (in flight, or from another tab) follow
                // the session to its new endpoint rather than being load-balanced afresh.
                let moved = Binding {
                    endpoint: binding.endpoint.clone(),
                    last_seen_ms: now_ms,
                    ..old.clone()
                };
                let old_retries = self
                    .table
                    .put(store, &moved, now_ms)
                    .map(|r| r.cas_retries)
                    .unwrap_or(0);
                let decision = Decision::Rebound {
                    old: old.id,
                    id,
                    from: old.endpoint.clone(),
                    to: binding.endpoint.clone(),
                };
                let mut action = self.bind(store, &binding, now_ms, decision);
                action.cas_retries += old_retries;
                action
            }
        }
    }

    fn bind(
        &self,
        store: &dyn Store,
        binding: &Binding,
        now_ms: u64,
        decision: Decision,
    ) -> ResponseAction {
        match self.table.put(store, binding, now_ms) {
            Ok(report) => ResponseAction {
                decision,
                set_cookie: Some(self.set_cookie(binding, now_ms)),
                cas_retries: report.cas_retries,
            },
            Err(e) => ResponseAction {
                decision: Decision::WriteFailed(e),
                set_cookie: None,
                cas_retries: 0,
            },
        }
    }

    fn set_cookie(&self, binding: &Binding, now_ms: u64) -> String {
        let max_age_s = match (
            self.settings.cookie.lifetime_type,
            self.settings.absolute_timeout_ms,
        ) {
            (LifetimeType::Permanent, Some(limit)) => {
                let left_ms = (binding.created_ms + limit).saturating_sub(now_ms);
                Some(left_ms.div_ceil(1000))
            }
            _ => None,
        };
        cookies::set_cookie(
            &self.settings.session_name,
            &binding.id,
            &self.settings.cookie,
            max_age_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::fake::FakeStore;
    use crate::token::SystemEntropy;

    const A: &str = "127.0.0.1:8081";
    const B: &str = "127.0.0.1:8082";

    fn engine(json: &str) -> Engine {
        Engine::new(Settings::parse(json.as_bytes()).unwrap())
    }

    fn yes() -> impl FnMut() -> bool {
        || true
    }

    /// Runs a request/response pair; returns the state and the cookie pair `name=value` issued.
    fn exchange(
        e: &Engine,
        store: &FakeStore,
        cookie: Option<&str>,
        served: &str,
        now: u64,
    ) -> (RequestState, ResponseAction) {
        let state = e.on_request(store, cookie.map(str::as_bytes), now);
        let action = e.on_response(
            store,
            &state,
            Some(served),
            &mut yes(),
            now,
            &mut SystemEntropy,
        );
        (state, action)
    }

    fn cookie_pair(action: &ResponseAction) -> String {
        action
            .set_cookie
            .as_ref()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn new_session_then_pinned() {
        let e = engine("{}");
        let store = FakeStore::default();
        let (state, action) = exchange(&e, &store, None, A, 1_000);
        assert_eq!(state, RequestState::New(Miss::NoToken));
        assert!(matches!(action.decision, Decision::Issued { ref endpoint, .. } if endpoint == A));
        let pair = cookie_pair(&action);
        assert!(pair.starts_with("tether="));
        assert!(!pair.contains("8081") && !pair.contains("127.0.0.1"));

        let (state, action) = exchange(&e, &store, Some(&pair), A, 2_000);
        assert!(matches!(state, RequestState::Pinned(ref b) if b.endpoint == A));
        assert!(matches!(action.decision, Decision::Hit { .. }));
        assert_eq!(action.set_cookie, None, "no Set-Cookie on a hit");
    }

    #[test]
    fn unknown_token_is_not_adopted() {
        let e = engine("{}");
        let store = FakeStore::default();
        let forged = format!("tether={}", SessionId([42; 16]).encode());
        let (state, action) = exchange(&e, &store, Some(&forged), A, 0);
        assert_eq!(state, RequestState::New(Miss::Unknown));
        assert_ne!(
            cookie_pair(&action),
            forged,
            "a client-chosen id is never bound"
        );
        // Garbage is no token at all.
        let (state, _) = exchange(&e, &store, Some("tether=../../etc"), A, 0);
        assert_eq!(state, RequestState::New(Miss::NoToken));
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let e = engine(r#"{"idle_timeout": "2s", "absolute_timeout": "5s"}"#);
        let store = FakeStore::default();
        let (_, action) = exchange(&e, &store, None, A, 0);
        let pair = cookie_pair(&action);
        // Used every 500 ms: stays alive past the idle timeout...
        for now in (500..4_900).step_by(500) {
            let (state, action) = exchange(&e, &store, Some(&pair), A, now);
            assert!(matches!(state, RequestState::Pinned(_)), "at {now} ms");
            assert_eq!(action.set_cookie, None);
        }
        // ...until the absolute timeout.
        let (state, action) = exchange(&e, &store, Some(&pair), A, 5_000);
        assert_eq!(state, RequestState::New(Miss::Expired));
        let fresh = cookie_pair(&action);
        assert_ne!(fresh, pair);
        // Silence longer than the idle timeout.
        let (state, _) = exchange(&e, &store, Some(&fresh), A, 5_000 + 2_100);
        assert_eq!(state, RequestState::New(Miss::Expired));
    }

    #[test]
    fn touches_are_rate_limited() {
        let e = engine(r#"{"idle_timeout": "40s"}"#);
        let store = FakeStore::default();
        let (_, action) = exchange(&e, &store, None, A, 0);
        let pair = cookie_pair(&action);
        let writes = store.sets.get();
        for now in 1..100 {
            exchange(&e, &store, Some(&pair), A, now * 10);
        }
        assert_eq!(
            store.sets.get(),
            writes,
            "hits within the touch interval write nothing"
        );
        let (_, action) = exchange(&e, &store, Some(&pair), A, 10_000);
        assert!(matches!(
            action.decision,
            Decision::Hit { touched: true, .. }
        ));
        assert_eq!(store.sets.get(), writes + 1);
    }

    #[test]
    fn rebind_when_another_endpoint_served() {
        let e = engine(r#"{"absolute_timeout": "1h", "cookie": {"lifetime_type": "permanent"}}"#);
        let store = FakeStore::default();
        let (_, action) = exchange(&e, &store, None, A, 0);
        let old = cookie_pair(&action);
        // A died; the retry reached B.
        let (_, action) = exchange(&e, &store, Some(&old), B, 600_000);
        assert!(
            matches!(action.decision, Decision::Rebound { ref from, ref to, .. } if from == A && to == B)
        );
        let set_cookie = action.set_cookie.clone().unwrap();
        assert!(
            set_cookie.contains("Max-Age=3000"),
            "what is left of the absolute timeout: {set_cookie}"
        );
        let new = cookie_pair(&action);
        assert_ne!(new, old);
        for cookie in [&new, &old] {
            let (state, action) = exchange(&e, &store, Some(cookie), B, 600_001);
            assert!(matches!(state, RequestState::Pinned(ref b) if b.endpoint == B));
            assert_eq!(action.set_cookie, None);
        }
    }

    #[test]
    fn local_replies_record_nothing() {
        let e = engine("{}");
        let store = FakeStore::default();
        let state = e.on_request(&store, None, 0);
        let writes = store.sets.get();
        let a = e.on_response(&store, &state, None, &mut yes(), 0, &mut SystemEntropy);
        assert_eq!(a.decision, Decision::Unserved);
        let a = e.on_response(
            &store,
            &state,
            Some(A),
            &mut || false,
            0,
            &mut SystemEntropy,
        );
        assert_eq!(a.decision, Decision::Unserved);
        assert_eq!(a.set_cookie, None);
        assert_eq!(store.sets.get(), writes);
    }

    #[test]
    fn the_first_live_candidate_wins() {
        let e = engine("{}");
        let store = FakeStore::default();
        let (_, action) = exchange(&e, &store, None, A, 0);
        let pair = cookie_pair(&action);
        let bogus = SessionId([9; 16]).encode();
        for header in [
            format!("tether={bogus}; {pair}"),
            format!("{pair}; tether={bogus}"),
            format!("tether=x; {pair}; tether=\u{ff}"),
        ] {
            let state = e.on_request(&store, Some(header.as_bytes()), 1);
            assert!(
                matches!(state, RequestState::Pinned(ref b) if b.endpoint == A),
                "{header}"
            );
        }
    }

    #[test]
    fn write_failure_issues_no_cookie() {
        let e = engine("{}");
        let store = FakeStore::default();
        e.table.prepare(&store).unwrap();
        store.force_mismatches.set(usize::MAX);
        let (_, action) = exchange(&e, &store, None, A, 0);
        assert_eq!(
            action.decision,
            Decision::WriteFailed(WriteError::Contended)
        );
        assert_eq!(action.set_cookie, None);
    }

    #[test]
    fn no_entropy_no_session() {
        struct Broken;
        impl Entropy for Broken {
            fn fill(&mut self, _: &mut [u8]) -> bool {
                false
            }
        }
        let e = engine("{}");
        let store = FakeStore::default();
        let state = e.on_request(&store, None, 0);
        let a = e.on_response(&store, &state, Some(A), &mut yes(), 0, &mut Broken);
        assert_eq!(a.decision, Decision::NoEntropy);
        assert_eq!(a.set_cookie, None);
    }
}
