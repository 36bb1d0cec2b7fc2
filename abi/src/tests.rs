//! The safe API against the fake host: what the wrappers read and write, and that a panic in a
//! phase never leaves a hook.

use crate::fake_host::{self, with_host};
use crate::hooks;
use crate::sys::attribute_id;
use crate::*;

fn pairs(p: &[(&str, &str)]) -> fake_host::Pairs {
    p.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn headers_are_read_one_at_a_time_all_values_or_whole() {
    fake_host::reset();
    with_host(|h| h.request = pairs(&[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")]));
    let envoy = fake_host::filter();
    assert_eq!(
        envoy.header(HeaderMap::Request, "cookie"),
        Some(&b"a=1"[..])
    );
    assert_eq!(envoy.header(HeaderMap::Request, "absent"), None);
    assert_eq!(envoy.header(HeaderMap::Response, "cookie"), None);
    assert_eq!(
        envoy.header_values(HeaderMap::Request, "cookie"),
        vec![&b"a=1"[..], &b"b=2"[..]]
    );
    assert!(envoy.header_values(HeaderMap::Request, "absent").is_empty());
    let all = envoy.headers(HeaderMap::Request);
    assert_eq!(all.len(), 3);
    assert_eq!(all.get(1), Some(&(&b"x"[..], &b"y"[..])));
}

#[test]
fn an_empty_map_reads_as_empty() {
    fake_host::reset();
    let envoy = fake_host::filter();
    assert!(envoy.headers(HeaderMap::Response).is_empty());
    assert_eq!(envoy.attribute(Attribute::UpstreamAddress), None);
    assert_eq!(envoy.cluster_name(), None);
}

#[test]
fn set_add_and_remove_change_the_map() {
    fake_host::reset();
    with_host(|h| h.response = pairs(&[("set-cookie", "a=1"), ("set-cookie", "b=2")]));
    let mut envoy = fake_host::filter();
    assert!(envoy.set_header(HeaderMap::Response, "set-cookie", b"c=3"));
    assert_eq!(
        envoy.header_values(HeaderMap::Response, "set-cookie"),
        vec![&b"c=3"[..]]
    );
    assert!(envoy.add_header(HeaderMap::Response, "set-cookie", b"d=4"));
    assert_eq!(
        envoy.header_values(HeaderMap::Response, "set-cookie").len(),
        2
    );
    // Envoy refuses to add an empty value and removes on an empty set.
    assert!(!envoy.add_header(HeaderMap::Response, "x", b""));
    assert!(envoy.remove_header(HeaderMap::Response, "set-cookie"));
    assert_eq!(envoy.header(HeaderMap::Response, "set-cookie"), None);
}

#[test]
fn attributes_cluster_and_override_host() {
    fake_host::reset();
    with_host(|h| {
        h.attributes = vec![(attribute_id::UPSTREAM_ADDRESS, b"127.0.0.1:8082".to_vec())];
        h.cluster = Some(b"app".to_vec());
    });
    let mut envoy = fake_host::filter();
    assert_eq!(
        envoy.attribute(Attribute::UpstreamAddress),
        Some(&b"127.0.0.1:8082"[..])
    );
    assert_eq!(envoy.attribute(Attribute::RouteName), None);
    assert_eq!(envoy.cluster_name(), Some(&b"app"[..]));
    assert!(envoy.set_upstream_override_host("127.0.0.1:8081", true));
    assert!(!envoy.set_upstream_override_host("backend:8081", false));
    envoy.clear_route_cache();
    with_host(|h| {
        assert_eq!(h.override_host, Some(("127.0.0.1:8081".into(), true)));
        assert_eq!(h.route_cache_cleared, 1);
    });
}

#[test]
fn local_reply_carries_headers_body_and_details() {
    fake_host::reset();
    let mut envoy = fake_host::filter();
    envoy.send_response(503, &[("retry-after", b"1")], b"gone\n", "tether_strict");
    let sent = with_host(|h| h.sent.take());
    assert_eq!(
        sent,
        Some((
            503,
            pairs(&[("retry-after", "1")]),
            b"gone\n".to_vec(),
            b"tether_strict".to_vec()
        ))
    );
}

#[test]
fn metrics_are_defined_then_moved() {
    fake_host::reset();
    let hits = fake_host::config().define_counter("tether_hits");
    let live = fake_host::config().define_gauge("tether_live_bindings");
    let (Some(hits), Some(live)) = (hits, live) else {
        panic!("metrics not defined");
    };
    let mut envoy = fake_host::filter();
    assert!(envoy.increment_counter(hits, 2));
    assert!(envoy.add_to_gauge(live, 3));
    assert!(envoy.add_to_gauge(live, -5));
    assert_eq!(fake_host::metric("tether_hits"), Some(2));
    assert_eq!(fake_host::metric("tether_live_bindings"), Some(-2));
}

#[test]
fn labelled_metrics_keep_one_value_per_set_of_label_values() {
    fake_host::reset();
    let hits = fake_host::config().define_counter_with_labels("hits", &["cluster", "endpoint"]);
    let live = fake_host::config().define_gauge_with_labels("live", &["endpoint"]);
    let (Some(hits), Some(live)) = (hits, live) else {
        panic!("metrics not defined");
    };
    let labels = with_host(|h| h.label_names.clone());
    assert_eq!(labels, vec![vec!["cluster", "endpoint"], vec!["endpoint"]]);
    let mut envoy = fake_host::filter();
    let a: &[&[u8]] = &[b"backend", b"127.0.0.1:1"];
    let b: &[&[u8]] = &[b"backend", b"[::1]:2"];
    assert!(envoy.increment_counter_with_labels(hits, a, 2));
    assert!(envoy.increment_counter_with_labels(hits, b, 1));
    assert!(envoy.increment_counter_with_labels(hits, a, 3));
    assert!(envoy.add_to_gauge_with_labels(live, &[b"[::1]:2"], 2));
    assert!(envoy.add_to_gauge_with_labels(live, &[b"[::1]:2"], -3));
    assert_eq!(
        fake_host::labeled_metric("hits", &["backend", "127.0.0.1:1"]),
        Some(5)
    );
    assert_eq!(
        fake_host::labeled_metric("hits", &["backend", "[::1]:2"]),
        Some(1)
    );
    assert_eq!(fake_host::labeled_metric("live", &["[::1]:2"]), Some(-1));
    // A wrong number of values is refused, and more than the stack holds is never passed.
    assert!(!envoy.increment_counter_with_labels(hits, &[b"backend"], 1));
    assert!(!envoy.increment_counter(hits, 1));
    let five: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e"];
    assert!(!envoy.increment_counter_with_labels(hits, five, 1));
    assert_eq!(
        fake_host::metric("hits"),
        Some(0),
        "the unlabelled value never moved"
    );
}

struct Panicky {
    calls: std::rc::Rc<std::cell::Cell<usize>>,
}

impl Filter for Panicky {
    fn on_request_headers(&mut self, _: &mut EnvoyFilter<'_>, _: bool) -> Status {
        self.calls.set(self.calls.get() + 1);
        panic!("boom");
    }
}

#[test]
fn a_panicking_phase_continues_the_stream_and_retires_the_filter() {
    fake_host::reset();
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let slot = Box::new(hooks::Slot::with(Box::new(Panicky {
        calls: calls.clone(),
    })));
    let module = Box::into_raw(slot) as sys::ModulePtr;
    let envoy = std::ptr::NonNull::<u8>::dangling().as_ptr().cast();
    let before = panics_caught();
    for _ in 0..2 {
        let status =
            hooks::envoy_dynamic_module_on_http_filter_request_headers(envoy, module, true);
        assert_eq!(status, sys::STATUS_CONTINUE);
    }
    // The second request phase found no filter: it had been retired after its panic.
    assert_eq!(calls.get(), 1);
    assert_eq!(panics_caught(), before + 1);
    assert!(with_host(|h| h.logs.iter().any(|(l, m)| *l
        == sys::log_level::CRITICAL
        && m.contains("on_http_filter_request_headers"))));
    hooks::envoy_dynamic_module_on_http_filter_destroy(module);
}

#[test]
fn the_logger_formats_only_what_envoy_prints_and_follows_its_level() {
    fake_host::reset();
    logger::install();
    with_host(|h| h.log_level = sys::log_level::INFO);
    log::debug!("hidden {}", 1);
    log::warn!("shown {}", 2);
    let logs = with_host(|h| std::mem::take(&mut h.logs));
    assert_eq!(logs, vec![(sys::log_level::WARN, "shown 2".to_string())]);

    // The `log` crate's own level follows Envoy's when refreshed (one test: that level is the
    // process's).
    for (envoy, expected) in [
        (sys::log_level::WARN, log::LevelFilter::Warn),
        (sys::log_level::DEBUG, log::LevelFilter::Debug),
        (sys::log_level::TRACE, log::LevelFilter::Trace),
        (sys::log_level::CRITICAL, log::LevelFilter::Off),
        (sys::log_level::ERROR, log::LevelFilter::Error),
    ] {
        with_host(|h| h.log_level = envoy);
        crate::refresh_log_level();
        assert_eq!(log::max_level(), expected, "Envoy at {envoy}");
    }
}
