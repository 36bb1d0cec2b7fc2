//! Figures per upstream endpoint, free of any host: sessions issued, hits, re-binds away from
//! and to an endpoint (each with the cluster that served), and the live bindings of the tables
//! per endpoint. Both adapters keep one `EndpointSeries` per worker thread.
//!
//! Cardinality: an endpoint name only ever comes from Envoy's upstream address (of this
//! response, or of the request that bound the session), never from client bytes, and a worker
//! gives its own series to at most `MAX_ENDPOINTS` endpoints; the figures of any later one go to
//! the series of endpoint `other` (cluster `other`). The aggregate metrics (`metrics`) stay exact
//! whatever the bound does.
//!
//! The cluster of an endpoint's series is read once per worker, the first time a counter of that
//! endpoint moves, so a returning request costs no property read: an address that serves in two
//! clusters of one Envoy is counted under the first one its worker saw. The request's cluster is
//! the served endpoint's; the endpoint a session left may be in another (a session on a dead
//! canary moved to stable), so its cluster is the one the session recorded, when it did.

use crate::metrics::Kind;
use crate::policy::{Decision, Found, ResponseAction};
use crate::table::WriteReport;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Endpoints a worker gives their own series to.
pub const MAX_ENDPOINTS: usize = 256;
/// The endpoint (and cluster) of the series every endpoint past the bound shares.
pub const OTHER: &str = "other";
/// The cluster of an endpoint whose cluster Envoy did not say.
pub const UNKNOWN_CLUSTER: &str = "unknown";
/// Longer names are not endpoints Envoy reports (an IPv6 address with a zone and a port fits).
const MAX_ENDPOINT_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointMetric {
    /// New sessions bound to the endpoint.
    SessionsIssued,
    /// Requests of a pinned session served by their endpoint.
    Hits,
    /// Sessions moved away from the endpoint (it could not be reached).
    RebindsAway,
    /// Sessions moved to the endpoint from another.
    RebindsTo,
    /// Bindings held for the endpoint in the binding tables (`learn`, `source_ip`).
    LiveBindings,
}

impl EndpointMetric {
    pub const ALL: [EndpointMetric; 5] = [
        EndpointMetric::SessionsIssued,
        EndpointMetric::Hits,
        EndpointMetric::RebindsAway,
        EndpointMetric::RebindsTo,
        EndpointMetric::LiveBindings,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EndpointMetric::SessionsIssued => "tether_endpoint_sessions_issued",
            EndpointMetric::Hits => "tether_endpoint_hits",
            EndpointMetric::RebindsAway => "tether_endpoint_rebinds_away",
            EndpointMetric::RebindsTo => "tether_endpoint_rebinds_to",
            EndpointMetric::LiveBindings => "tether_endpoint_live_bindings",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            EndpointMetric::LiveBindings => Kind::Gauge,
            _ => Kind::Counter,
        }
    }

    /// Whether the series is per cluster too. A binding is evicted or expires while another
    /// session's request is served, whose cluster says nothing of the binding's: the gauge is
    /// per endpoint only.
    pub fn by_cluster(self) -> bool {
        self != EndpointMetric::LiveBindings
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One per-endpoint change: the endpoint's cluster when something other than the request's
/// cluster names it (`None`: the request's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<'a> {
    pub metric: EndpointMetric,
    pub endpoint: &'a str,
    pub cluster: Option<&'a str>,
    pub delta: i64,
}

/// Calls `f` for every per-endpoint change a response made: its decision's counters, then the
/// tables' per-endpoint gauge. `pinned`: what the request found (the session's recorded cluster
/// is the one of the endpoint it leaves).
pub fn for_each_change(action: &ResponseAction<'_>, pinned: &Found, mut f: impl FnMut(Change<'_>)) {
    let mut counter = |metric, endpoint: &str, cluster| {
        f(Change {
            metric,
            endpoint,
            cluster,
            delta: 1,
        })
    };
    match &action.decision {
        Decision::Issued { endpoint, .. } => {
            counter(EndpointMetric::SessionsIssued, endpoint, None)
        }
        Decision::Hit { endpoint, .. } => counter(EndpointMetric::Hits, endpoint, None),
        Decision::Rebound { from, to } => {
            let recorded = match pinned {
                Found::Pinned(pin) => pin.cluster.as_deref(),
                _ => None,
            };
            counter(EndpointMetric::RebindsAway, from, recorded);
            counter(EndpointMetric::RebindsTo, to, None);
        }
        _ => {}
    }
    for_each_live_change(&action.writes, f);
}

/// Calls `f` for the per-endpoint gauge's change of each endpoint a table write moved (a
/// response's, or the one a stream's end makes, which lets expired bindings go).
pub fn for_each_live_change(writes: &WriteReport, mut f: impl FnMut(Change<'_>)) {
    for (endpoint, delta) in &writes.endpoint_deltas {
        f(Change {
            metric: EndpointMetric::LiveBindings,
            endpoint,
            cluster: None,
            delta: *delta,
        });
    }
}

/// One series: a metric of one endpoint (and cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series<'a> {
    pub metric: EndpointMetric,
    pub endpoint: &'a str,
    /// `None` for the per-endpoint gauge.
    pub cluster: Option<&'a str>,
}

impl Series<'_> {
    /// The series as one stat name, for a host whose metrics have no labels (proxy-wasm). The
    /// tags are recovered by Envoy's tag extraction (`stats_config.stats_tags`, see
    /// docs/operations.md): the endpoint comes last after `.endpoint=` and never holds a `=`, so
    /// it is found from the end, and the cluster is whatever lies between `.cluster=` and that
    /// (a cluster name may hold dots, `=` and `|`).
    pub fn stat_name(&self) -> String {
        match self.cluster {
            Some(cluster) => format!(
                "{}.cluster={cluster}.endpoint={}",
                self.metric.name(),
                self.endpoint
            ),
            None => format!("{}.endpoint={}", self.metric.name(), self.endpoint),
        }
    }
}

/// One endpoint's series on this worker: the host's ids of its metrics (`Id`, defined when the
/// adapter first needs them) and the changes not yet handed over.
#[derive(Debug)]
struct Slot<Id> {
    endpoint: Arc<str>,
    cluster: Option<Arc<str>>,
    ids: [Option<Id>; EndpointMetric::ALL.len()],
    pending: [i64; EndpointMetric::ALL.len()],
    dirty: bool,
}

impl<Id> Slot<Id> {
    fn new(endpoint: Arc<str>, cluster: Option<Arc<str>>) -> Slot<Id> {
        Slot {
            endpoint,
            cluster,
            ids: [None, None, None, None, None],
            pending: [0; EndpointMetric::ALL.len()],
            dirty: false,
        }
    }
}

/// A worker's per-endpoint series, bounded (see the module's note).
#[derive(Debug)]
pub struct EndpointSeries<Id> {
    slots: Vec<Slot<Id>>,
    by_endpoint: HashMap<Arc<str>, usize, BuildHasherDefault<fnv::FnvHasher>>,
    other: Slot<Id>,
    cap: usize,
}

impl<Id: Copy> Default for EndpointSeries<Id> {
    fn default() -> Self {
        EndpointSeries::with_cap(MAX_ENDPOINTS)
    }
}

/// What the host does with one series' change: `id` is the series' metric id on the host, if
/// it has been defined (the host may define it and store it); `true` when the change was taken.
pub trait SeriesSink<Id> {
    fn hand(&mut self, series: &Series<'_>, id: &mut Option<Id>, delta: i64) -> bool;
}

impl<Id: Copy> EndpointSeries<Id> {
    pub fn with_cap(cap: usize) -> Self {
        let other: Arc<str> = Arc::from(OTHER);
        EndpointSeries {
            slots: Vec::new(),
            by_endpoint: HashMap::default(),
            other: Slot::new(other.clone(), Some(other)),
            cap,
        }
    }

    /// The slot of `endpoint` (created if there is room), its cluster taken from `known` or read
    /// once by `read` when a counter needs it.
    fn slot(
        &mut self,
        metric: EndpointMetric,
        endpoint: &str,
        known: Option<&str>,
        read: &mut dyn FnMut() -> Option<String>,
    ) -> &mut Slot<Id> {
        let index = match self.by_endpoint.get(endpoint) {
            Some(i) => Some(*i),
            None if self.slots.len() < self.cap
                && !endpoint.is_empty()
                && endpoint.len() <= MAX_ENDPOINT_LEN
                && !endpoint.contains('=') =>
            {
                let name: Arc<str> = Arc::from(endpoint);
                self.slots.push(Slot::new(name.clone(), None));
                let i = self.slots.len() - 1;
                self.by_endpoint.insert(name, i);
                Some(i)
            }
            None => None,
        };
        let slot = match index.and_then(|i| self.slots.get_mut(i)) {
            Some(slot) => slot,
            None => &mut self.other,
        };
        if metric.by_cluster() && slot.cluster.is_none() {
            let name = match known {
                Some(c) => Arc::from(c),
                None => Arc::from(read().unwrap_or_else(|| UNKNOWN_CLUSTER.to_string())),
            };
            slot.cluster = Some(name);
        }
        slot
    }

    /// The series a change goes to (the adapter hands it over now); `read` reads the request's
    /// cluster.
    pub fn series(
        &mut self,
        change: &Change<'_>,
        read: &mut dyn FnMut() -> Option<String>,
    ) -> Series<'_> {
        let metric = change.metric;
        let slot = self.slot(metric, change.endpoint, change.cluster, read);
        Series {
            metric,
            endpoint: &slot.endpoint,
            cluster: if metric.by_cluster() {
                slot.cluster.as_deref()
            } else {
                None
            },
        }
    }

    /// Adds a change to hand over later (`flush`); `read` reads the request's cluster.
    pub fn add(&mut self, change: &Change<'_>, read: &mut dyn FnMut() -> Option<String>) {
        let slot = self.slot(change.metric, change.endpoint, change.cluster, read);
        if let Some(p) = slot.pending.get_mut(change.metric.index()) {
            *p = p.saturating_add(change.delta);
            slot.dirty = true;
        }
    }

    /// Hands every pending change to `sink`; returns how many it refused (those are kept for
    /// the next flush).
    pub fn flush(&mut self, sink: &mut dyn SeriesSink<Id>) -> usize {
        let mut refused = 0;
        for slot in self
            .slots
            .iter_mut()
            .chain(std::iter::once(&mut self.other))
        {
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            for metric in EndpointMetric::ALL {
                let i = metric.index();
                let (Some(delta), Some(id)) = (slot.pending.get_mut(i), slot.ids.get_mut(i)) else {
                    continue;
                };
                if *delta == 0 {
                    continue;
                }
                let series = Series {
                    metric,
                    endpoint: &slot.endpoint,
                    cluster: if metric.by_cluster() {
                        Some(slot.cluster.as_deref().unwrap_or(UNKNOWN_CLUSTER))
                    } else {
                        None
                    },
                };
                if sink.hand(&series, id, *delta) {
                    *delta = 0;
                } else {
                    refused += 1;
                    slot.dirty = true;
                }
            }
        }
        refused
    }

    /// Endpoints with their own series.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin::Pin;
    use crate::policy::Miss;
    use std::rc::Rc;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A host that defines ids in order and keeps each series' total by its stat name.
    #[derive(Default)]
    struct Host {
        defined: Vec<String>,
        totals: HashMap<String, i64>,
        refuse: bool,
    }

    impl SeriesSink<usize> for Host {
        fn hand(&mut self, series: &Series<'_>, id: &mut Option<usize>, delta: i64) -> bool {
            if self.refuse {
                return false;
            }
            let name = series.stat_name();
            if id.is_none() {
                self.defined.push(name.clone());
                *id = Some(self.defined.len() - 1);
            }
            *self.totals.entry(name).or_default() += delta;
            true
        }
    }

    fn action(decision: Decision, deltas: &[(&str, i64)]) -> ResponseAction<'static> {
        let mut a = ResponseAction::new(decision);
        a.writes.endpoint_deltas = deltas.iter().map(|(e, d)| (Rc::from(*e), *d)).collect();
        a
    }

    fn changes(a: &ResponseAction<'_>) -> Vec<(EndpointMetric, String, i64)> {
        let mut v = Vec::new();
        for_each_change(a, &Found::New(Miss::NoToken), |c| {
            assert_eq!(c.cluster, None, "{c:?}");
            v.push((c.metric, c.endpoint.to_string(), c.delta))
        });
        v
    }

    /// A change with the request's cluster.
    fn ch(metric: EndpointMetric, endpoint: &str, delta: i64) -> Change<'_> {
        Change {
            metric,
            endpoint,
            cluster: None,
            delta,
        }
    }

    const A: &str = "127.0.0.1:8081";
    const B: &str = "[2001:db8::7]:8080";

    #[test]
    fn decisions_move_their_endpoints_counters_and_writes_the_gauge() {
        use EndpointMetric::*;
        let e = |s: &str| Rc::<str>::from(s);
        let issued = Decision::Issued {
            endpoint: e(A),
            miss: Miss::NoToken,
        };
        assert_eq!(
            changes(&action(issued, &[(A, 1)])),
            vec![(SessionsIssued, A.into(), 1), (LiveBindings, A.into(), 1)]
        );
        let hit = Decision::Hit {
            endpoint: e(B),
            refreshed: true,
        };
        assert_eq!(changes(&action(hit, &[])), vec![(Hits, B.into(), 1)]);
        let moved = Decision::Rebound {
            from: e(A),
            to: e(B),
        };
        assert_eq!(
            changes(&action(moved, &[(A, -1), (B, 1)])),
            vec![
                (RebindsAway, A.into(), 1),
                (RebindsTo, B.into(), 1),
                (LiveBindings, A.into(), -1),
                (LiveBindings, B.into(), 1)
            ]
        );
        let refused = Decision::Refused { endpoint: e(A) };
        assert_eq!(changes(&action(refused, &[])), vec![]);
    }

    #[test]
    fn stat_names_end_in_the_endpoint_after_the_cluster() {
        let s = Series {
            metric: EndpointMetric::Hits,
            endpoint: B,
            cluster: Some("outbound|8080||app.ns.svc.cluster.local"),
        };
        assert_eq!(
            s.stat_name(),
            "tether_endpoint_hits.cluster=outbound|8080||app.ns.svc.cluster.local.endpoint=[2001:db8::7]:8080"
        );
        let g = Series {
            metric: EndpointMetric::LiveBindings,
            endpoint: A,
            cluster: None,
        };
        assert_eq!(
            g.stat_name(),
            "tether_endpoint_live_bindings.endpoint=127.0.0.1:8081"
        );
    }

    #[test]
    fn the_cluster_is_read_once_per_endpoint_and_only_for_counters() {
        let mut series = EndpointSeries::<usize>::default();
        let mut reads = 0;
        let mut read = || {
            reads += 1;
            Some("backend".to_string())
        };
        series.add(&ch(EndpointMetric::LiveBindings, A, 1), &mut read);
        for _ in 0..5 {
            series.add(&ch(EndpointMetric::Hits, A, 1), &mut read);
        }
        series.add(&ch(EndpointMetric::RebindsAway, A, 1), &mut read);
        assert_eq!(reads, 1);
        let mut host = Host::default();
        assert_eq!(series.flush(&mut host), 0);
        assert_eq!(
            host.totals,
            HashMap::from([
                (
                    format!("tether_endpoint_hits.cluster=backend.endpoint={A}"),
                    5
                ),
                (
                    format!("tether_endpoint_rebinds_away.cluster=backend.endpoint={A}"),
                    1
                ),
                (format!("tether_endpoint_live_bindings.endpoint={A}"), 1),
            ])
        );
        // Defined once: a second flush hands only what changed, with the same ids.
        series.add(&ch(EndpointMetric::Hits, A, 2), &mut || None);
        assert_eq!(series.flush(&mut host), 0);
        assert_eq!(host.defined.len(), 3);
        assert_eq!(
            host.totals[&format!("tether_endpoint_hits.cluster=backend.endpoint={A}")],
            7
        );
        assert_eq!(series.flush(&mut host), 0);
        assert_eq!(host.defined.len(), 3, "nothing pending, nothing handed");
    }

    #[test]
    fn the_endpoint_a_session_left_keeps_the_cluster_the_session_recorded() {
        use EndpointMetric::*;
        let mut a = ResponseAction::new(Decision::Rebound {
            from: Rc::from(A),
            to: Rc::from(B),
        });
        a.writes.endpoint_deltas = Vec::new();
        let pinned = Found::Pinned(Pin::new(A, Some("app-canary"), 0));
        let mut series = EndpointSeries::<usize>::default();
        let mut seen = Vec::new();
        for_each_change(&a, &pinned, |c| {
            seen.push((c.metric, c.cluster.map(str::to_string)));
            series.add(&c, &mut || Some("app-stable".to_string()));
        });
        assert_eq!(
            seen,
            vec![(RebindsAway, Some("app-canary".into())), (RebindsTo, None)]
        );
        let mut host = Host::default();
        series.flush(&mut host);
        assert_eq!(
            host.totals,
            HashMap::from([
                (
                    format!("tether_endpoint_rebinds_away.cluster=app-canary.endpoint={A}"),
                    1
                ),
                (
                    format!("tether_endpoint_rebinds_to.cluster=app-stable.endpoint={B}"),
                    1
                ),
            ])
        );
    }

    #[test]
    fn endpoints_past_the_bound_share_the_other_series() {
        let mut series = EndpointSeries::<usize>::with_cap(2);
        let mut read = || Some("c".to_string());
        for port in 0..10 {
            series.add(
                &ch(EndpointMetric::Hits, &format!("10.0.0.1:{port}"), 1),
                &mut read,
            );
        }
        // Not endpoints Envoy names: never a series of their own.
        series.add(&ch(EndpointMetric::Hits, "", 1), &mut read);
        series.add(&ch(EndpointMetric::Hits, &"9".repeat(65), 1), &mut read);
        assert_eq!(series.len(), 2);
        let mut host = Host::default();
        series.flush(&mut host);
        assert_eq!(host.totals.len(), 3);
        assert_eq!(
            host.totals["tether_endpoint_hits.cluster=other.endpoint=other"],
            10
        );
        assert_eq!(
            host.totals["tether_endpoint_hits.cluster=c.endpoint=10.0.0.1:1"],
            1
        );
        let via = series.series(&ch(EndpointMetric::Hits, "10.0.0.9:1", 1), &mut read);
        assert_eq!((via.endpoint, via.cluster), (OTHER, Some(OTHER)));
    }

    #[test]
    fn a_refused_change_is_kept_for_the_next_flush() {
        let mut series = EndpointSeries::<usize>::default();
        series.add(&ch(EndpointMetric::Hits, A, 3), &mut || None);
        let mut host = Host {
            refuse: true,
            ..Host::default()
        };
        assert_eq!(series.flush(&mut host), 1);
        host.refuse = false;
        assert_eq!(series.flush(&mut host), 0);
        assert_eq!(
            host.totals[&format!("tether_endpoint_hits.cluster={UNKNOWN_CLUSTER}.endpoint={A}")],
            3
        );
    }
}
