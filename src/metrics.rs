//! What tether counts, free of any host. The adapter (`filter`) records into a `Tally` on the
//! request path, which costs no host call, and hands the totals to Envoy's stats once a second
//! (`drain`), so the metrics cost nothing per request but a few additions.
//!
//! Every name carries the `tether_` prefix. Envoy keeps proxy-wasm metrics in its `wasmcustom`
//! namespace: `/stats` lists `wasmcustom.tether_hits`, `/stats/prometheus` lists `tether_hits`.

use crate::policy::{Decision, Found, Miss, ResponseAction};
use crate::table::WriteReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric: its index in a `Tally`, its name and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// New sessions bound to the endpoint that served them (tokens issued, ids learned).
    SessionsIssued,
    /// Requests of a pinned session served by its endpoint.
    Hits,
    /// Pinned sessions moved to another endpoint because theirs could not be reached.
    Rebinds,
    /// Requests whose session had outlived its idle or absolute lifetime.
    Expired,
    /// `cookie`/`header` tokens that did not open: forged, tampered, another key or route.
    InvalidTokens,
    /// Client-sent copies of the headers tether owns, removed before routing.
    ForgedHeadersRemoved,
    /// Live bindings pushed out of a full bucket of the binding table.
    Evictions,
    /// Compare-and-swap races lost (and retried) writing the binding table.
    CasRetries,
    /// Strict sessions refused because their endpoint did not serve.
    StrictRefusals,
    /// Pinned sessions let go because no endpoint could be reached.
    SessionsDropped,
    /// Sessions the application ended (a DELETE its endpoint answered in 2xx, or a 404 from
    /// it: `learn_from: response_header`).
    SessionsEnded,
    /// Bindings that could not be written (shared data refused, every CAS try lost, or an
    /// endpoint too long).
    WriteFailures,
    /// Tokens that could not be sealed (no randomness, an endpoint too long).
    SealFailures,
    /// Envoy's own replies (a timeout, an overflow) to pinned requests: the session was kept.
    LocalReplies,
    /// A backend's `Set-Cookie` (or header) of tether's own name, removed from its response.
    BackendCookiesRemoved,
    /// Learned ids longer than tether binds.
    IdsTooLong,
    /// Host calls that failed where the request went on without their result.
    HostCallFailures,
    /// Bindings held in the binding tables (`learn`, `source_ip`) of this Envoy.
    LiveBindings,
}

impl Metric {
    pub const ALL: [Metric; 18] = [
        Metric::SessionsIssued,
        Metric::Hits,
        Metric::Rebinds,
        Metric::Expired,
        Metric::InvalidTokens,
        Metric::ForgedHeadersRemoved,
        Metric::Evictions,
        Metric::CasRetries,
        Metric::StrictRefusals,
        Metric::SessionsDropped,
        Metric::SessionsEnded,
        Metric::WriteFailures,
        Metric::SealFailures,
        Metric::LocalReplies,
        Metric::BackendCookiesRemoved,
        Metric::IdsTooLong,
        Metric::HostCallFailures,
        Metric::LiveBindings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::SessionsIssued => "tether_sessions_issued",
            Metric::Hits => "tether_hits",
            Metric::Rebinds => "tether_rebinds",
            Metric::Expired => "tether_expired",
            Metric::InvalidTokens => "tether_invalid_tokens",
            Metric::ForgedHeadersRemoved => "tether_forged_headers_removed",
            Metric::Evictions => "tether_evictions",
            Metric::CasRetries => "tether_cas_retries",
            Metric::StrictRefusals => "tether_strict_refusals",
            Metric::SessionsDropped => "tether_sessions_dropped",
            Metric::SessionsEnded => "tether_sessions_ended",
            Metric::WriteFailures => "tether_write_failures",
            Metric::SealFailures => "tether_seal_failures",
            Metric::LocalReplies => "tether_local_replies",
            Metric::BackendCookiesRemoved => "tether_backend_cookies_removed",
            Metric::IdsTooLong => "tether_ids_too_long",
            Metric::HostCallFailures => "tether_host_call_failures",
            Metric::LiveBindings => "tether_live_bindings",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::LiveBindings => Kind::Gauge,
            _ => Kind::Counter,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Changes not yet handed to the host, one slot per metric.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    deltas: [i64; Metric::ALL.len()],
}

impl Tally {
    pub fn add(&mut self, metric: Metric, n: i64) {
        if let Some(d) = self.deltas.get_mut(metric.index()) {
            *d = d.saturating_add(n);
        }
    }

    /// What the request phase found. `sealed`: the policy's sessions are sealed tokens (an
    /// unknown one is invalid); else an unknown key is simply a new session.
    pub fn request(&mut self, sealed: bool, found: &Found) {
        match found {
            Found::New(Miss::Expired) => self.add(Metric::Expired, 1),
            Found::New(Miss::TooLong) => self.add(Metric::IdsTooLong, 1),
            Found::New(Miss::Unknown) if sealed => self.add(Metric::InvalidTokens, 1),
            _ => {}
        }
    }

    /// What the response phase decided and wrote.
    pub fn response(&mut self, action: &ResponseAction) {
        let metric = match action.decision {
            Decision::Issued { .. } => Some(Metric::SessionsIssued),
            Decision::Hit { .. } => Some(Metric::Hits),
            Decision::Rebound { .. } => Some(Metric::Rebinds),
            Decision::Refused { .. } => Some(Metric::StrictRefusals),
            Decision::Dropped { .. } => Some(Metric::SessionsDropped),
            Decision::Ended { .. } => Some(Metric::SessionsEnded),
            Decision::WriteFailed(_) => Some(Metric::WriteFailures),
            Decision::SealFailed(_) => Some(Metric::SealFailures),
            Decision::Kept { .. } => Some(Metric::LocalReplies),
            Decision::Unserved { .. } | Decision::Unbound { .. } | Decision::OutsidePath => None,
        };
        if let Some(m) = metric {
            self.add(m, 1);
        }
        self.writes(&action.writes);
        self.add(
            Metric::BackendCookiesRemoved,
            to_i64(action.backend_cookies_removed),
        );
    }

    /// What a write to a binding table did: the response's, or the one a stream's end makes.
    pub fn writes(&mut self, writes: &WriteReport) {
        self.add(Metric::CasRetries, to_i64(writes.cas_retries));
        self.add(Metric::Evictions, to_i64(writes.evicted_live));
        self.add(Metric::LiveBindings, writes.bindings_delta);
    }

    /// No change since the last drain.
    pub fn is_empty(&self) -> bool {
        self.deltas.iter().all(|d| *d == 0)
    }

    /// Every metric with a change since the last drain, and its change; the tally is zeroed.
    pub fn drain(&mut self) -> impl Iterator<Item = (Metric, i64)> {
        let deltas = std::mem::take(&mut self.deltas);
        Metric::ALL.into_iter().zip(deltas).filter(|(_, d)| *d != 0)
    }
}

pub fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::Pin;
    use crate::seal::SealError;
    use crate::table::WriteError;
    use std::collections::HashMap;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn drained(t: &mut Tally) -> HashMap<Metric, i64> {
        t.drain().collect()
    }

    impl std::hash::Hash for Metric {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.index().hash(state)
        }
    }

    #[test]
    fn names_are_prefixed_unique_and_indexed_in_order() {
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("tether_")));
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i, "{m:?}");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        assert_eq!(Metric::LiveBindings.kind(), Kind::Gauge);
        assert_eq!(Metric::Hits.kind(), Kind::Counter);
    }

    #[test]
    fn each_decision_counts_once_under_its_name() {
        let e = || std::rc::Rc::<str>::from("127.0.0.1:1");
        let cases = [
            (
                Decision::Issued {
                    endpoint: e(),
                    miss: Miss::NoToken,
                },
                Some(Metric::SessionsIssued),
            ),
            (
                Decision::Hit {
                    endpoint: e(),
                    refreshed: false,
                },
                Some(Metric::Hits),
            ),
            (
                Decision::Rebound { from: e(), to: e() },
                Some(Metric::Rebinds),
            ),
            (
                Decision::Refused { endpoint: e() },
                Some(Metric::StrictRefusals),
            ),
            (
                Decision::Dropped { endpoint: e() },
                Some(Metric::SessionsDropped),
            ),
            (
                Decision::Kept {
                    endpoint: e(),
                    details: "response_timeout".into(),
                },
                Some(Metric::LocalReplies),
            ),
            (
                Decision::WriteFailed(WriteError::Contended),
                Some(Metric::WriteFailures),
            ),
            (
                Decision::SealFailed(SealError::NoEntropy),
                Some(Metric::SealFailures),
            ),
            (
                Decision::Unserved {
                    details: String::new(),
                },
                None,
            ),
            (
                Decision::Unbound {
                    miss: Miss::NoToken,
                },
                None,
            ),
            (Decision::OutsidePath, None),
        ];
        for (decision, metric) in cases {
            let mut t = Tally::default();
            t.response(&ResponseAction::new(decision.clone()));
            let got: Vec<(Metric, i64)> = t.drain().collect();
            assert_eq!(
                got,
                metric.map(|m| (m, 1)).into_iter().collect::<Vec<_>>(),
                "{decision:?}"
            );
            assert_eq!(t.drain().count(), 0, "drain zeroes the tally");
        }
    }

    #[test]
    fn writes_report_retries_evictions_removals_and_the_bindings_gauge() {
        let mut t = Tally::default();
        let mut a = ResponseAction::new(Decision::OutsidePath);
        a.writes.cas_retries = 3;
        a.writes.evicted_live = 1;
        a.writes.bindings_delta = 1;
        a.backend_cookies_removed = 2;
        t.response(&a);
        a.writes.bindings_delta = -2;
        t.response(&a);
        let d = drained(&mut t);
        assert_eq!(d[&Metric::CasRetries], 6);
        assert_eq!(d[&Metric::Evictions], 2);
        assert_eq!(d[&Metric::LiveBindings], -1);
        assert_eq!(d[&Metric::BackendCookiesRemoved], 4);
    }

    #[test]
    fn unknown_tokens_are_invalid_but_unknown_learned_ids_are_new_sessions() {
        let mut t = Tally::default();
        t.request(true, &Found::New(Miss::Unknown));
        t.request(true, &Found::New(Miss::Unknown));
        t.request(false, &Found::New(Miss::Unknown));
        t.request(false, &Found::New(Miss::Unknown));
        t.request(true, &Found::New(Miss::NoToken));
        t.request(false, &Found::New(Miss::Expired));
        t.request(false, &Found::New(Miss::TooLong));
        t.request(true, &Found::OutsidePath);
        let pin = Pin::new("127.0.0.1:1", None, 0);
        t.request(true, &Found::Pinned(pin));
        let d = drained(&mut t);
        assert_eq!(d[&Metric::InvalidTokens], 2);
        assert_eq!(d[&Metric::Expired], 1);
        assert_eq!(d[&Metric::IdsTooLong], 1);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn tally_saturates_instead_of_overflowing() {
        let mut t = Tally::default();
        t.add(Metric::Hits, i64::MAX);
        t.add(Metric::Hits, 1);
        assert_eq!(drained(&mut t)[&Metric::Hits], i64::MAX);
    }
}
