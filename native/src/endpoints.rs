//! The per-endpoint series (`tether::endpoints`) over Envoy's labelled metrics: each metric is
//! defined once with its labels (`cluster`, `endpoint`), and every change names its values, so
//! Envoy shows the tags without any `stats_tags` in the bootstrap. The changes wait in the
//! worker's pending figures (`metrics`) until they are handed over.

use log::warn;
use tether::endpoints::{EndpointMetric, Series, SeriesSink};
use tether::metrics::Kind;
use tether_abi::{ConfigHandle, EnvoyFilter, MetricId};

/// The labels of the per-cluster counters, in the order their values are passed.
const COUNTER_LABELS: [&str; 2] = ["cluster", "endpoint"];
const GAUGE_LABELS: [&str; 1] = ["endpoint"];

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

    pub(crate) fn get(&self, metric: EndpointMetric) -> Option<MetricId> {
        self.0.iter().find(|(m, _)| *m == metric).map(|(_, id)| *id)
    }
}

/// The per-endpoint series through a stream's labelled metrics, for a configuration that hands
/// its figures over from each phase (no tick).
pub(crate) struct FilterSink<'e, 'a> {
    pub(crate) envoy: &'e mut EnvoyFilter<'a>,
    pub(crate) ids: &'e EndpointIds,
}

impl SeriesSink<()> for FilterSink<'_, '_> {
    fn hand(&mut self, series: &Series<'_>, _id: &mut Option<()>, delta: i64) -> bool {
        let Some(id) = self.ids.get(series.metric) else {
            // Never defined (Envoy refused it at configuration): nothing to hand it to.
            return true;
        };
        let endpoint = series.endpoint.as_bytes();
        match (series.cluster, series.metric.kind()) {
            (Some(cluster), Kind::Counter) => self.envoy.increment_counter_with_labels(
                id,
                &[cluster.as_bytes(), endpoint],
                delta.unsigned_abs(),
            ),
            (Some(cluster), Kind::Gauge) => {
                self.envoy
                    .add_to_gauge_with_labels(id, &[cluster.as_bytes(), endpoint], delta)
            }
            (None, _) => self.envoy.add_to_gauge_with_labels(id, &[endpoint], delta),
        }
    }
}
