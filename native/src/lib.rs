//! tether as an Envoy dynamic module (`envoy.filters.http.dynamic_modules`): the same core as the
//! proxy-wasm module, behind the adapter in `filter`, which does what `src/filter.rs` does with
//! Envoy's dynamic-module ABI (`tether-abi`) instead of proxy-wasm's host calls.
//!
//! Differences that follow from the ABI, not from tether's behaviour: the pinned endpoint is
//! handed to Envoy with the upstream-override-host call (strict sessions with its strict flag)
//! instead of the routing header; the binding table and the per-Envoy secret live in this
//! library's memory (`store`), which every worker shares; metrics reach Envoy once a second
//! from its main thread (`metrics`), as the Wasm build's reach it from each worker's tick.

mod endpoints;
mod filter;
mod metrics;
pub mod store;

use log::warn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tether::config::{Config, KeysSecret};
use tether::entropy::SystemEntropy;
use tether::metrics::{Kind, Metric};
use tether::plugin;
use tether::secret::Key;
use tether_abi::{ConfigHandle, EnvoyFilter, Filter, FilterConfig, MetricId, SecretId};

// Exporting Envoy's entry point is an unsafe attribute (`#[no_mangle]`): the adapter's only one.
#[allow(unsafe_code)]
mod entry {
    tether_abi::declare_module!(crate::new_config);
}

/// The native build's own counter: panics its hooks caught (the Wasm build cannot count its
/// own: a panic ends its VM).
pub(crate) const PANICS_METRIC: &str = "tether_panics";

/// Envoy's ids of tether's metrics, defined on one configuration, and of `tether_panics`.
pub(crate) struct MetricIds(Vec<(Metric, Kind, MetricId)>, Option<MetricId>);

impl MetricIds {
    fn define(config: &mut ConfigHandle<'_>) -> MetricIds {
        let mut ids = Vec::new();
        for m in Metric::ALL {
            let id = match m.kind() {
                Kind::Counter => config.define_counter(m.name()),
                Kind::Gauge => config.define_gauge(m.name()),
            };
            match id {
                Some(id) => ids.push((m, m.kind(), id)),
                None => warn!("tether: cannot define metric {}", m.name()),
            }
        }
        let panics = config.define_counter(PANICS_METRIC);
        if panics.is_none() {
            warn!("tether: cannot define metric {PANICS_METRIC}");
        }
        MetricIds(ids, panics)
    }

    pub(crate) fn panics(&self) -> Option<MetricId> {
        self.1
    }

    pub(crate) fn get(&self, metric: Metric) -> Option<(Kind, MetricId)> {
        self.0
            .iter()
            .find(|(m, _, _)| *m == metric)
            .map(|(_, k, id)| (*k, *id))
    }
}

/// One filter configuration: what each worker compiles its own `Plugin` from (the core's
/// token cache is per worker, as in the Wasm build), and the metric ids.
pub(crate) struct TetherConfig {
    /// Tells this configuration's per-worker plugins from those of earlier ones.
    pub(crate) id: u64,
    pub(crate) config: Config,
    /// The Envoy secrets the policies' keys come from (`keys_secret`), as subscribed.
    pub(crate) secrets: Vec<(KeysSecret, SecretId)>,
    /// A stream went on without tether for want of a secret's value (logged once).
    pub(crate) secrets_missed: AtomicBool,
    pub(crate) secret: Key,
    pub(crate) metrics: MetricIds,
    pub(crate) endpoint_metrics: endpoints::EndpointIds,
    /// What the workers have not handed to Envoy yet.
    pub(crate) flusher: Arc<metrics::Flusher>,
}

/// The module's configuration factory: the JSON the Wasm build takes, as `filter_config`.
fn new_config(
    handle: &mut ConfigHandle<'_>,
    _name: &[u8],
    bytes: &[u8],
) -> Option<Box<dyn FilterConfig>> {
    // `keys_secret`: each secret is subscribed to once, while Envoy makes the configuration
    // (the only time the ABI allows it), and read as it is now; each worker reads it again
    // for every stream, so a rotation by SDS reaches its sessions (`filter::worker_plugin`).
    let mut secrets: Vec<(KeysSecret, SecretId)> = Vec::new();
    let mut read = |secret: &KeysSecret| -> Result<Option<Vec<u8>>, String> {
        let known = secrets.iter().find(|(s, _)| s == secret).map(|(_, id)| *id);
        let id = match known {
            Some(id) => id,
            None => {
                let id = handle
                    .subscribe_secret(&secret.name, secret.config_source.as_deref())
                    .ok_or_else(|| match secret.config_source {
                        None => format!(
                            "Envoy has no generic secret \"{}\" in static_resources.secrets",
                            secret.name
                        ),
                        Some(_) => format!(
                            "Envoy refused to subscribe to the secret \"{}\" from its \
                             config_source (Envoy's log says why)",
                            secret.name
                        ),
                    })?;
                secrets.push((secret.clone(), id));
                id
            }
        };
        let value = handle.secret(id).unwrap_or_default();
        match (value.is_empty(), &secret.config_source) {
            // SDS delivers after the configuration is made (before the listener serves).
            (true, Some(_)) => Ok(None),
            _ => Ok(Some(value.to_vec())),
        }
    };
    let started = plugin::start(
        bytes,
        store::global(),
        &mut SystemEntropy,
        plugin::Secrets::Envoy(&mut read),
    )?;
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    Some(Box::new(SharedConfig(Arc::new(TetherConfig {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        config: started.config,
        secrets,
        secrets_missed: AtomicBool::new(false),
        secret: started.secret,
        metrics: MetricIds::define(handle),
        endpoint_metrics: endpoints::EndpointIds::define(handle),
        flusher: metrics::Flusher::new(handle.scheduler()),
    }))))
}

/// The configuration Envoy holds; each of its filters holds it too.
struct SharedConfig(Arc<TetherConfig>);

impl FilterConfig for SharedConfig {
    fn new_filter(&self, envoy: &mut EnvoyFilter<'_>) -> Option<Box<dyn Filter>> {
        let filter = filter::TetherFilter::new(self.0.clone(), envoy)?;
        Some(Box::new(filter))
    }

    /// The flush the ticking thread scheduled.
    fn on_scheduled(&self, config: &mut ConfigHandle<'_>, _event_id: u64) {
        let c = &self.0;
        c.flusher.flush(config, &c.metrics, &c.endpoint_metrics);
    }
}
