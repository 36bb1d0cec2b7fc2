//! The per-endpoint series (`tether::endpoints`) over Envoy's labelled metrics: each metric is
//! defined once with its labels (`cluster`, `endpoint`), and every change names its values, so
//! Envoy shows the tags without any `stats_tags` in the bootstrap. This host has no timers: a
//! change is handed over in the phase that made it (a returning request's hit is one call).

use log::warn;
use std::cell::RefCell;
use tether::endpoints::{for_each_change, EndpointMetric, EndpointSeries};
use tether::metrics::Kind;
use tether::policy::{Found, ResponseAction};
use tether_abi::{ConfigHandle, EnvoyFilter, MetricId};

/// The labels of the per-cluster counters, in the order their values are passed.
const COUNTER_LABELS: [&str; 2] = ["cluster", "endpoint"];
const GAUGE_LABELS: [&str; 1] = ["endpoint"];

thread_local! {
    /// This worker's bound on endpoints and the cluster of each (the ids are the
    /// configuration's: nothing to keep per series).
    static SERIES: RefCell<EndpointSeries<()>> = RefCell::new(EndpointSeries::default());
}

/// Envoy's ids of the per-endpoint metrics, defined on one configuration.
pub(crate) struct EndpointIds(Vec<(EndpointMetric, MetricId)>);

impl EndpointIds {
    pub(crate) fn define(config: &mut ConfigHandle<'_>) -> EndpointIds {
        let mut ids = Vec::new();
        for m in EndpointMetric::ALL {
            let labels: &[&str] = if m.by_cluster() {
                &COUNTER_LABELS
            } else {
                &GAUGE_LABELS
            };
            let id = match m.kind() {
                Kind::Counter => config.define_counter_with_labels(m.name(), labels),
                Kind::Gauge => config.define_gauge_with_labels(m.name(), labels),
            };
            match id {
                Some(id) => ids.push((m, id)),
                None => warn!("tether: cannot define metric {}", m.name()),
            }
        }
        EndpointIds(ids)
    }

    fn get(&self, metric: EndpointMetric) -> Option<MetricId> {
        self.0.iter().find(|(m, _)| *m == metric).map(|(_, id)| *id)
    }
}

/// Hands a response's per-endpoint changes to Envoy (`pinned`: what its request found); returns
/// how many calls failed.
pub(crate) fn record(
    envoy: &mut EnvoyFilter<'_>,
    ids: &EndpointIds,
    action: &ResponseAction<'_>,
    pinned: &Found,
) -> i64 {
    let mut failed = 0;
    SERIES.with(|series| {
        let mut series = series.borrow_mut();
        for_each_change(action, pinned, |change| {
            let (metric, delta) = (change.metric, change.delta);
            let Some(id) = ids.get(metric) else {
                return;
            };
            let s = series.series(&change, &mut || {
                envoy
                    .cluster_name()
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .map(str::to_string)
            });
            let ok = match (s.cluster, metric.kind()) {
                (Some(cluster), Kind::Counter) => envoy.increment_counter_with_labels(
                    id,
                    &[cluster.as_bytes(), s.endpoint.as_bytes()],
                    delta.unsigned_abs(),
                ),
                (Some(cluster), Kind::Gauge) => envoy.add_to_gauge_with_labels(
                    id,
                    &[cluster.as_bytes(), s.endpoint.as_bytes()],
                    delta,
                ),
                (None, _) => envoy.add_to_gauge_with_labels(id, &[s.endpoint.as_bytes()], delta),
            };
            if !ok {
                failed += 1;
            }
        });
    });
    failed
}
