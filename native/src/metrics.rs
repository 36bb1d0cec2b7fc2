//! tether's metrics in the native build: every worker adds its streams' changes to figures of its
//! own (`Pending`), and Envoy's main thread hands them to Envoy's stats once a second, the
//! cadence of the Wasm build's tick. A request then makes no metric call at all: a labelled one
//! (a returning session's per-endpoint hit) has Envoy resolve the series' name on every call,
//! and that stood out in a profile of the returning cookie path.
//!
//! This host has no timer for an HTTP filter. One thread of the module's (`tether-metrics`),
//! asleep but for a moment each second, commits a configuration's scheduler when one of its
//! workers added something, and Envoy runs `flush` on its main thread; a configuration gone by
//! then is not called. Where the thread or a scheduler could not be made, each phase hands its
//! changes over itself, as the proxy-wasm host's tick-less build would.

use crate::endpoints::EndpointIds;
use crate::MetricIds;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::Duration;
use tether::endpoints::{EndpointSeries, Series, SeriesSink};
use tether::metrics::{Kind, Metric, Tally};
use tether_abi::{ConfigHandle, ConfigScheduler, MetricId};

/// How often the pending figures are handed over; the Wasm build's tick is one second too.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// A poisoned lock (a panic while it was held, caught at the hook) still holds counts worth
/// keeping.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker's changes for one configuration, not handed to Envoy yet.
pub(crate) struct Pending {
    worker: ThreadId,
    pub(crate) tally: Tally,
    /// The per-endpoint series of `tether::endpoints`, bounded per worker.
    pub(crate) series: EndpointSeries<()>,
}

/// What one configuration's workers have pending, and how it reaches Envoy.
pub(crate) struct Flusher {
    workers: Mutex<Vec<Arc<Mutex<Pending>>>>,
    /// A worker added something since the last commit.
    dirty: AtomicBool,
    scheduler: Mutex<Option<ConfigScheduler>>,
    /// Figures go through `flush` (else each phase hands its own over).
    ticking: bool,
}

impl Flusher {
    /// The flusher of a new configuration; `scheduler` is the configuration's, if Envoy made one.
    pub(crate) fn new(scheduler: Option<ConfigScheduler>) -> Arc<Flusher> {
        // Started whether or not Envoy made a scheduler: it also keeps open streams' sessions
        // fresh (filter::tick_holds).
        let started = ticker_started();
        let ticking = scheduler.is_some() && started;
        let flusher = Arc::new(Flusher {
            workers: Mutex::new(Vec::new()),
            dirty: AtomicBool::new(false),
            scheduler: Mutex::new(scheduler),
            ticking,
        });
        if ticking {
            lock(&REGISTRY).push(Arc::downgrade(&flusher));
        }
        flusher
    }

    pub(crate) fn ticking(&self) -> bool {
        self.ticking
    }

    /// The calling worker's pending figures (made and registered on its first stream).
    pub(crate) fn worker(&self) -> Arc<Mutex<Pending>> {
        let me = std::thread::current().id();
        let mut workers = lock(&self.workers);
        if let Some(p) = workers.iter().find(|p| lock(p).worker == me) {
            return p.clone();
        }
        let p = Arc::new(Mutex::new(Pending {
            worker: me,
            tally: Tally::default(),
            series: EndpointSeries::default(),
        }));
        workers.push(p.clone());
        p
    }

    /// A worker added something: the next tick commits the scheduler.
    pub(crate) fn touch(&self) {
        // Read first: workers mostly find it set, and a read keeps the line shared.
        if !self.dirty.load(Ordering::Relaxed) {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    fn commit(&self) {
        if let Some(s) = lock(&self.scheduler).as_ref() {
            s.commit(0);
        }
    }

    /// Hands every worker's pending figures to Envoy, on the main thread (the configuration's
    /// scheduled event); returns how many calls failed.
    pub(crate) fn flush(
        &self,
        config: &mut ConfigHandle<'_>,
        metrics: &MetricIds,
        endpoint_ids: &EndpointIds,
    ) -> i64 {
        let workers = lock(&self.workers).clone();
        let mut failed = 0;
        for worker in workers {
            let mut p = lock(&worker);
            let refused = hand_tally(&mut p.tally, metrics, &mut |id, kind, delta| match kind {
                Kind::Counter => {
                    config.increment_counter_with_labels(id, &[], delta.unsigned_abs())
                }
                Kind::Gauge => config.add_to_gauge_with_labels(id, &[], delta),
            });
            let mut sink = ConfigSink {
                config,
                ids: endpoint_ids,
            };
            // The series keeps what Envoy refused for the next flush.
            let kept = p.series.flush(&mut sink);
            // Counted in the next flush.
            p.tally.add(Metric::HostCallFailures, refused);
            if refused > 0 || kept > 0 {
                self.touch();
            }
            failed += refused;
        }
        if let Some(id) = metrics.panics() {
            let new = unreported_panics(&REPORTED_PANICS, tether_abi::panics_caught());
            if new > 0 {
                config.increment_counter_with_labels(id, &[], new);
            }
        }
        failed
    }
}

/// Hands a tally's changes over, one `hand` per metric that changed; returns how many were
/// refused (those changes are dropped, and counted as host call failures by the caller).
pub(crate) fn hand_tally(
    tally: &mut Tally,
    metrics: &MetricIds,
    hand: &mut dyn FnMut(MetricId, Kind, i64) -> bool,
) -> i64 {
    let mut failed = 0;
    for (metric, delta) in tally.drain() {
        let ok = match metrics.get(metric) {
            // A counter never goes down; a negative change is a tally's own error, not Envoy's.
            Some((Kind::Counter, _)) if delta < 0 => true,
            Some((kind, id)) => hand(id, kind, delta),
            None => true,
        };
        if !ok {
            failed += 1;
        }
    }
    failed
}

/// The per-endpoint series through the configuration's labelled metrics.
struct ConfigSink<'c, 'a> {
    config: &'c mut ConfigHandle<'a>,
    ids: &'c EndpointIds,
}

impl SeriesSink<()> for ConfigSink<'_, '_> {
    fn hand(&mut self, series: &Series<'_>, _id: &mut Option<()>, delta: i64) -> bool {
        let Some(id) = self.ids.get(series.metric) else {
            // Never defined (Envoy refused it at configuration): nothing to hand it to.
            return true;
        };
        let endpoint = series.endpoint.as_bytes();
        match (series.cluster, series.metric.kind()) {
            (Some(cluster), Kind::Counter) => self.config.increment_counter_with_labels(
                id,
                &[cluster.as_bytes(), endpoint],
                delta.unsigned_abs(),
            ),
            (Some(cluster), Kind::Gauge) => {
                self.config
                    .add_to_gauge_with_labels(id, &[cluster.as_bytes(), endpoint], delta)
            }
            (None, _) => self.config.add_to_gauge_with_labels(id, &[endpoint], delta),
        }
    }
}

/// Panics caught in this process and reported to Envoy's stats so far.
pub(crate) static REPORTED_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many of `caught` panics are not reported yet; marks them reported.
pub(crate) fn unreported_panics(reported: &AtomicU64, caught: u64) -> u64 {
    caught.saturating_sub(reported.fetch_max(caught, Ordering::Relaxed))
}

/// The flushers of live configurations that tick (weak: a configuration Envoy destroyed goes).
static REGISTRY: Mutex<Vec<Weak<Flusher>>> = Mutex::new(Vec::new());

/// Starts the ticking thread the first time it is asked for; false if it could not start.
fn ticker_started() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("tether-metrics".to_string())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_INTERVAL);
                tick();
            })
            .is_ok()
    })
}

/// One tick: the log level is read from Envoy again; every configuration with something
/// pending gets its flush scheduled; a panic not reported yet gets the first one's.
fn tick() {
    tether_abi::refresh_log_level();
    crate::filter::tick_holds();
    let live: Vec<Arc<Flusher>> = {
        let mut registry = lock(&REGISTRY);
        registry.retain(|w| w.strong_count() > 0);
        registry.iter().filter_map(Weak::upgrade).collect()
    };
    let panics = tether_abi::panics_caught() > REPORTED_PANICS.load(Ordering::Relaxed);
    commit_pending(&live, panics);
}

fn commit_pending(flushers: &[Arc<Flusher>], mut panics: bool) {
    for flusher in flushers {
        if flusher.dirty.swap(false, Ordering::Relaxed) || std::mem::take(&mut panics) {
            flusher.commit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caught_panic_is_reported_once() {
        let reported = AtomicU64::new(0);
        assert_eq!(unreported_panics(&reported, 0), 0);
        assert_eq!(unreported_panics(&reported, 2), 2);
        assert_eq!(unreported_panics(&reported, 2), 0, "already reported");
        // Two flushes at once: the later count only adds what is new.
        assert_eq!(unreported_panics(&reported, 1), 0);
        assert_eq!(unreported_panics(&reported, 5), 3);
    }

    /// A flusher the ticking thread does not know of, so a test's commits are its own.
    fn unregistered() -> Arc<Flusher> {
        Arc::new(Flusher {
            workers: Mutex::new(Vec::new()),
            dirty: AtomicBool::new(false),
            scheduler: Mutex::new(tether_abi::fake_host::config().scheduler()),
            ticking: true,
        })
    }

    #[test]
    fn a_tick_commits_only_configurations_with_something_pending() {
        tether_abi::fake_host::reset();
        let (idle, busy) = (unregistered(), unregistered());
        busy.touch();
        commit_pending(&[idle.clone(), busy.clone()], false);
        assert_eq!(tether_abi::fake_host::with_host(|h| h.committed.len()), 1);
        commit_pending(&[idle.clone(), busy.clone()], false);
        assert_eq!(
            tether_abi::fake_host::with_host(|h| h.committed.len()),
            1,
            "nothing new since"
        );
        // A panic not reported yet is reported by the first one.
        commit_pending(&[idle, busy], true);
        assert_eq!(tether_abi::fake_host::with_host(|h| h.committed.len()), 2);
    }

    #[test]
    fn each_worker_gets_one_pending_and_keeps_it() {
        let flusher = Flusher::new(None);
        assert!(
            !flusher.ticking(),
            "no scheduler: each phase hands over itself"
        );
        let a = flusher.worker();
        let again = flusher.worker();
        assert!(Arc::ptr_eq(&a, &again));
        let other = std::thread::spawn({
            let flusher = flusher.clone();
            move || Arc::as_ptr(&flusher.worker()) as usize
        })
        .join()
        .unwrap();
        assert_ne!(other, Arc::as_ptr(&a) as usize);
        assert_eq!(lock(&flusher.workers).len(), 2);
    }
}
