//! Sessions the backend starts (`learn_from: response_header`), envelopes and table mode.

use super::*;
use crate::config::Config;
use crate::encoding::{base64url_decode, base64url_encode};
use crate::entropy::SystemEntropy;
use crate::plugin::{Plugin, Stream};
use crate::testing::{FakeRequest, FakeResponse, FakeStore};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const A: &str = "127.0.0.1:8081";
const B: &str = "127.0.0.1:8082";
const H: &str = "mcp-session-id";
const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const MCP: &str =
    r#"{"type": "learn", "learn_from": "response_header", "session_name": "mcp-session-id"}"#;

fn plugin(json: &str) -> Plugin {
    Plugin::new(&Config::parse(json.as_bytes()).unwrap(), &[7; 32])
}

fn with_keys(keys: &str) -> String {
    MCP.replace('}', &format!(r#", "keys": [{keys}]}}"#))
}

struct X {
    found: Found,
    /// The request headers the backend receives, as set by tether (`None` in the value: removed).
    request: Vec<(String, Option<Vec<u8>>)>,
    response: Vec<(String, Option<Vec<u8>>)>,
    decision: Decision,
    refuse: Option<(u16, u64)>,
}

impl X {
    fn set(ops: &[(String, Option<Vec<u8>>)], name: &str) -> Option<Option<String>> {
        ops.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref().map(|v| String::from_utf8(v.clone()).unwrap()))
    }
    /// What the client gets in the session header (`Some(None)`: removed).
    fn envelope(&self) -> Option<Option<String>> {
        Self::set(&self.response, H)
    }
    /// What the backend gets in the session header.
    fn backend_id(&self) -> Option<Option<String>> {
        Self::set(&self.request, H)
    }
    fn pinned_to(&self) -> Option<&str> {
        match &self.found {
            Found::Pinned(p) => Some(&*p.endpoint),
            _ => None,
        }
    }
}

fn flatten(ops: &[HeaderOp<'_>]) -> Vec<(String, Option<Vec<u8>>)> {
    ops.iter()
        .map(|op| match op {
            HeaderOp::Set(n, v) | HeaderOp::Add(n, v) => (n.to_string(), Some(v.clone())),
            HeaderOp::Remove(n) => (n.to_string(), None),
        })
        .collect()
}

fn exchange(
    p: &Plugin,
    store: &FakeStore,
    mut req: FakeRequest,
    mut resp: FakeResponse,
    now: u64,
) -> X {
    let plan = p.on_request(None, &mut req, store, now);
    let stream = plan.stream.clone().unwrap();
    let action = p.on_response(&stream, &mut resp, store, now, &mut SystemEntropy);
    X {
        found: stream.state.found().clone(),
        request: flatten(&plan.ops),
        response: flatten(&action.ops),
        decision: action.decision,
        refuse: action.refuse,
    }
}

/// `initialize` answered by `endpoint` naming session `id`: the envelope the client gets.
fn initialize(p: &Plugin, store: &FakeStore, endpoint: &str, id: &str, now: u64) -> String {
    let x = exchange(
        p,
        store,
        FakeRequest::new(),
        FakeResponse::ok(endpoint).header(H, id),
        now,
    );
    assert!(
        matches!(x.decision, Decision::Issued { .. }),
        "{:?}",
        x.decision
    );
    x.envelope().unwrap().unwrap()
}

fn call(envelope: &str) -> FakeRequest {
    FakeRequest::new().header(H, envelope)
}

#[test]
fn the_client_gets_an_envelope_and_the_backend_its_own_id() {
    let p = plugin(MCP);
    let store = FakeStore::default();
    let id = "9f3c2e0a41b94d0fa0e8d2b6c1a7e5f4";
    let env = initialize(&p, &store, B, id, 0);
    assert_ne!(env, id);
    assert!(!env.contains(id) && !env.contains("8082") && !env.contains("127.0.0.1"));
    assert!(
        env.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "visible ASCII: {env}"
    );
    assert_eq!(store.sets.get(), 0, "nothing stored");
    for now in 1..5 {
        // The server names the session on its answers too: the client keeps seeing the envelope.
        let x = exchange(
            &p,
            &store,
            call(&env),
            FakeResponse::ok(B).header(H, id),
            now,
        );
        assert_eq!(x.pinned_to(), Some(B));
        assert_eq!(
            x.backend_id(),
            Some(Some(id.to_string())),
            "the backend sees its own id"
        );
        assert_eq!(
            X::set(&x.request, "x-tether-host"),
            Some(Some(B.to_string()))
        );
        assert_eq!(x.envelope(), Some(Some(env.clone())), "never the raw id");
        assert!(matches!(x.decision, Decision::Hit { .. }));
    }
    // An answer that names no session adds nothing.
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(B), 9);
    assert_eq!(x.envelope(), None);
}

#[test]
fn no_header_from_upstream_adds_nothing_and_a_request_without_one_is_new() {
    let p = plugin(MCP);
    let store = FakeStore::default();
    let x = exchange(&p, &store, FakeRequest::new(), FakeResponse::ok(A), 0);
    assert_eq!(
        x.decision,
        Decision::Unbound {
            miss: Miss::NoToken
        }
    );
    assert!(x.response.is_empty() && x.request.is_empty());
    assert_eq!(x.found, Found::New(Miss::NoToken));
}

/// Issue #13, item 6: a forged, altered, expired or foreign envelope never steers; it is no
/// session and passes to the backend as it came.
#[test]
fn bad_envelopes_never_steer_and_pass_unchanged() {
    let p = plugin(&MCP.replace('}', r#", "absolute_timeout": "1h"}"#));
    let store = FakeStore::default();
    let env = initialize(&p, &store, A, "session-1", 0);
    let raw = base64url_decode(env.as_bytes()).unwrap();
    let mut bad: Vec<String> = Vec::new();
    for bit in (0..raw.len() * 8).step_by(7) {
        let mut b = raw.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        bad.push(base64url_encode(&b));
    }
    for cut in [0, 1, 10, raw.len() / 2, raw.len() - 1] {
        bad.push(base64url_encode(&raw[..cut]));
    }
    bad.push(format!("{env}A"));
    bad.push("session-1".into());
    let other = plugin(&with_keys(&format!("\"{K2}\"")));
    bad.push(initialize(&other, &FakeStore::default(), A, "session-1", 0));
    for value in bad.iter().filter(|v| !v.is_empty()) {
        let x = exchange(&p, &store, call(value), FakeResponse::new(404, Some(B)), 10);
        assert_eq!(x.found, Found::New(Miss::Unknown), "{value}");
        assert_eq!(x.backend_id(), None, "passes unchanged: {value}");
        assert_eq!(X::set(&x.request, "x-tether-host"), None);
        assert_eq!(
            x.decision,
            Decision::Unbound {
                miss: Miss::Unknown
            }
        );
    }
    // Replayed after its absolute lifetime: no session, passed unchanged.
    let x = exchange(
        &p,
        &store,
        call(&env),
        FakeResponse::new(404, Some(B)),
        3_600_000,
    );
    assert_eq!(x.found, Found::New(Miss::Expired));
    assert_eq!(x.backend_id(), None);
}

#[test]
fn ids_of_every_visible_ascii_byte_and_at_the_limit_round_trip() {
    let p = plugin(MCP);
    let store = FakeStore::default();
    let every: String = (0x21u8..=0x7e).map(char::from).collect();
    let at_limit = "x".repeat(MAX_RESPONSE_ID_LEN);
    for id in [every.as_str(), at_limit.as_str(), "a"] {
        let env = initialize(&p, &store, A, id, 0);
        let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 1);
        assert_eq!(x.backend_id(), Some(Some(id.to_string())));
        assert!(env.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    // Over the limit: left as the backend sent it, pinning nothing, said so.
    let over = "x".repeat(MAX_RESPONSE_ID_LEN + 1);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(A).header(H, &over),
        0,
    );
    assert_eq!(
        x.decision,
        Decision::Unbound {
            miss: Miss::TooLong
        }
    );
    assert_eq!(x.envelope(), None, "the backend's value is left alone");
}

/// Issue #13, item 3: the application ends the session.
#[test]
fn a_delete_its_endpoint_accepts_and_a_404_end_the_session() {
    let p = plugin(MCP);
    let store = FakeStore::default();
    let env = initialize(&p, &store, A, "s1", 0);
    // Another method answered in 2xx, with a body or without (a notification's 202), goes on;
    // so does a DELETE with a body (the session's end carries none), whose method is not read.
    for (method, body, status) in [
        ("POST", true, 200),
        ("POST", true, 202),
        ("GET", false, 200),
        ("PUT", false, 204),
        ("DELETE", true, 200),
    ] {
        let mut req = FakeRequest::method(method, "/mcp").header(H, &env);
        if body {
            req = req.with_body();
        }
        let x = exchange(&p, &store, req, FakeResponse::new(status, Some(A)), 1);
        assert!(
            matches!(x.decision, Decision::Hit { .. }),
            "{method} {status}"
        );
    }
    // A tool call costs no read of its method.
    let mut tool_call = FakeRequest::method("POST", "/mcp")
        .header(H, &env)
        .with_body();
    assert!(p
        .on_request(None, &mut tool_call, &store, 1)
        .stream
        .is_some());
    let mut bodiless = FakeRequest::method("POST", "/mcp").header(H, &env);
    p.on_request(None, &mut bodiless, &store, 1);
    assert_eq!(
        bodiless.header_reads,
        tool_call.header_reads + 1,
        "the method is read without a body only"
    );
    // A DELETE the endpoint refuses (405: the server keeps sessions without it) ends nothing.
    let delete_req = FakeRequest::method("DELETE", "/mcp").header(H, &env);
    let x = exchange(
        &p,
        &store,
        delete_req.clone(),
        FakeResponse::new(405, Some(A)),
        1,
    );
    assert!(matches!(x.decision, Decision::Hit { .. }));
    // The server names the session in its answer to the DELETE: the client gets its envelope
    // back, never the server's own id.
    let x = exchange(
        &p,
        &store,
        delete_req,
        FakeResponse::new(200, Some(A)).header(H, "s1"),
        1,
    );
    assert_eq!(
        x.decision,
        Decision::Ended {
            endpoint: A.into(),
            reason: EndReason::Deleted
        }
    );
    assert_eq!(x.envelope(), Some(Some(env.clone())));
    let x = exchange(&p, &store, call(&env), FakeResponse::new(404, Some(A)), 2);
    assert_eq!(
        x.decision,
        Decision::Ended {
            endpoint: A.into(),
            reason: EndReason::NotFound
        }
    );
    // A response that refuses a session never creates one.
    for status in [400, 404, 500, 503] {
        let x = exchange(
            &p,
            &store,
            FakeRequest::new(),
            FakeResponse::new(status, Some(A)).header(H, "s2"),
            3,
        );
        assert_eq!(
            x.decision,
            Decision::Unbound {
                miss: Miss::NoToken
            },
            "{status}"
        );
        assert_eq!(x.envelope(), None);
    }
}

/// Issue #13, item 4: the pinned endpoint is gone.
#[test]
fn a_gone_endpoint_rebinds_only_where_the_answer_accepts_the_session() {
    let p = plugin(MCP);
    let store = FakeStore::default();
    let env = initialize(&p, &store, A, "s1", 0);
    // Another server answers as for an unknown session: the client starts again.
    let x = exchange(&p, &store, call(&env), FakeResponse::new(404, Some(B)), 1);
    assert_eq!(x.decision, Decision::Dropped { endpoint: A.into() });
    assert_eq!(x.envelope(), None);
    // A server that takes the session over: it moves there.
    let x = exchange(
        &p,
        &store,
        call(&env),
        FakeResponse::ok(B).header(H, "s1"),
        2,
    );
    assert!(
        matches!(x.decision, Decision::Rebound { .. }),
        "{:?}",
        x.decision
    );
    let moved = x.envelope().unwrap().unwrap();
    assert_eq!(
        exchange(&p, &store, call(&moved), FakeResponse::ok(B), 3).pinned_to(),
        Some(B)
    );
    // Strict: refused at once.
    let strict = plugin(&MCP.replace('}', r#", "on_unavailable": "strict", "retry_after": "2s"}"#));
    let env = initialize(&strict, &store, A, "s3", 0);
    let x = exchange(
        &strict,
        &store,
        call(&env),
        FakeResponse::new(404, Some(B)),
        1,
    );
    assert_eq!(x.refuse, Some((503, 2)));
}

#[test]
fn replicas_with_the_same_keys_route_alike_and_rotation_keeps_sessions() {
    let one = plugin(&with_keys(&format!("\"{K1}\"")));
    let two = Plugin::new(
        &Config::parse(with_keys(&format!("\"{K1}\"")).as_bytes()).unwrap(),
        &[9; 32],
    );
    let env = initialize(&one, &FakeStore::default(), B, "s", 0);
    for p in [&one, &two] {
        let x = exchange(p, &FakeStore::default(), call(&env), FakeResponse::ok(B), 1);
        assert_eq!(x.pinned_to(), Some(B));
        assert_eq!(x.backend_id(), Some(Some("s".into())));
    }
    let rotated = plugin(&with_keys(&format!("\"{K2}\", \"{K1}\"")));
    assert_eq!(
        exchange(
            &rotated,
            &FakeStore::default(),
            call(&env),
            FakeResponse::ok(B),
            2
        )
        .pinned_to(),
        Some(B)
    );
}

/// The session's GET of its event stream at `at`, answered by A (and still open).
fn opened_stream(p: &Plugin, store: &FakeStore, envelope: &str, at: u64) -> Stream {
    let stream = p
        .on_request(None, &mut call(envelope), store, at)
        .stream
        .unwrap();
    p.on_response(
        &stream,
        &mut FakeResponse::ok(A),
        store,
        at,
        &mut SystemEntropy,
    );
    stream
}

/// Issue #13, item 5: an open stream is activity; the idle clock counts from its end.
#[test]
fn a_long_stream_keeps_its_session_and_the_idle_clock_counts_from_its_end() {
    // With and without a worker's memory of fresh records: it saves reads, never a session.
    for store in [FakeStore::default(), FakeStore::remembering(64)] {
        long_stream_keeps_its_session(store);
    }
    // Without an idle timeout nothing is stored and nothing watches the stream.
    let plain = plugin(MCP);
    assert_eq!(plain.tables().count(), 0);
}

fn long_stream_keeps_its_session(store: FakeStore) {
    let p = plugin(&MCP.replace('}', r#", "idle_timeout": "10s"}"#));
    for table in p.tables() {
        table.prepare(&store).unwrap();
    }
    let env = initialize(&p, &store, A, "s1", 0);
    // The GET that opens the event stream at 1 s; it stays open 30 s.
    let stream = opened_stream(&p, &store, &env, 1_000);
    assert!(p.watches_stream_end(&stream));
    p.on_stream_end(&stream, &store, 31_000);
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 40_000);
    assert_eq!(
        x.pinned_to(),
        Some(A),
        "9 s after the stream ended: still pinned"
    );
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 50_001);
    assert_eq!(
        x.found,
        Found::New(Miss::Expired),
        "idle 10 s since the last use"
    );
    // An Envoy with no record of the session (another replica) keeps it.
    let x = exchange(
        &p,
        &FakeStore::default(),
        call(&env),
        FakeResponse::ok(A),
        50_001,
    );
    assert_eq!(x.pinned_to(), Some(A));
}

/// A stream still open is activity for the requests made meanwhile: its hold, ticked by the
/// adapter's timer, keeps the record fresh; without the ticks the same request finds it idle.
#[test]
fn an_open_streams_hold_keeps_its_session_fresh_while_it_lasts() {
    for store in [FakeStore::default(), FakeStore::remembering(64)] {
        for ticked in [true, false] {
            let p = plugin(&MCP.replace('}', r#", "idle_timeout": "10s"}"#));
            for table in p.tables() {
                table.prepare(&store).unwrap();
            }
            let env = initialize(&p, &store, A, "s1", 0);
            let stream = opened_stream(&p, &store, &env, 1_000);
            let mut hold = p
                .hold(&stream, 1_000)
                .expect("an open stream of a pinned session");
            if ticked {
                for second in 2..=25 {
                    hold.tick(&store, second * 1_000);
                }
            }
            // A request 24 s into the stream, 14 s past the idle timeout of the last one.
            let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 25_000);
            if ticked {
                assert_eq!(x.pinned_to(), Some(A), "the stream is open");
            } else {
                assert_eq!(x.found, Found::New(Miss::Expired), "no tick, no activity");
            }
            // Touches of a live binding change no count.
            assert_eq!(hold.into_report().bindings_delta, 0);
        }
    }
    // Without an idle timeout there is nothing to hold.
    let p = plugin(MCP);
    let store = FakeStore::default();
    let env = initialize(&p, &store, A, "s1", 0);
    let stream = p.on_request(None, &mut call(&env), &store, 1_000).stream;
    assert!(stream.is_none_or(|s| p.hold(&s, 1_000).is_none()));
}

/// A session that comes back often costs no shared-data read while this worker knows its
/// record fresh, and its short requests' ends write nothing; idle expiry is the same.
#[test]
fn a_hot_envelope_session_skips_the_shared_data_read() {
    let p = plugin(&MCP.replace('}', r#", "idle_timeout": "40s"}"#));
    let store = FakeStore::remembering(64);
    let cold = FakeStore::default();
    for table in p.tables() {
        table.prepare(&store).unwrap();
        table.prepare(&cold).unwrap();
    }
    let env = initialize(&p, &store, A, "s1", 0);
    assert_eq!(initialize(&p, &cold, A, "s1", 0).len(), env.len());
    let (gets, sets) = (store.gets.get(), store.sets.get());
    let (cold_gets, cold_sets) = (cold.gets.get(), cold.sets.get());
    // The touch interval is a quarter of the idle timeout: 10 s.
    for now in (1_000..10_000).step_by(1_000) {
        for s in [&store, &cold] {
            let plan = p.on_request(None, &mut call(&env), s, now);
            let stream = plan.stream.unwrap();
            assert!(matches!(stream.state.found(), Found::Pinned(pin) if &*pin.endpoint == A));
            p.on_response(
                &stream,
                &mut FakeResponse::ok(A),
                s,
                now,
                &mut SystemEntropy,
            );
            p.on_stream_end(&stream, s, now + 5);
        }
    }
    assert_eq!(
        (store.gets.get(), store.sets.get()),
        (gets, sets),
        "no read, no write"
    );
    assert!(
        cold.gets.get() >= cold_gets + 9,
        "without the memory: reads every request"
    );
    assert_eq!(
        cold.sets.get(),
        cold_sets,
        "but writes at no stream's end: the request found the record fresh"
    );
    // Past the interval the record is read and written again.
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 10_500);
    assert_eq!(x.pinned_to(), Some(A));
    assert!(store.gets.get() > gets && store.sets.get() > sets);
    // Idle 40 s after that write: expired, memory or not.
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 50_500);
    assert_eq!(x.found, Found::New(Miss::Expired));
    // A DELETE's end is forgotten too: the next request reads the store.
    let env = initialize(&p, &store, B, "s2", 60_000);
    let gets = store.gets.get();
    let x = exchange(
        &p,
        &store,
        FakeRequest::method("DELETE", "/mcp").header(H, &env),
        FakeResponse::ok(B),
        61_000,
    );
    assert!(
        matches!(x.decision, Decision::Ended { .. }),
        "{:?}",
        x.decision
    );
    let gets_after_delete = store.gets.get();
    assert!(gets_after_delete > gets);
    exchange(
        &p,
        &store,
        call(&env),
        FakeResponse::new(404, Some(B)),
        62_000,
    );
    assert!(
        store.gets.get() > gets_after_delete,
        "forgotten: read again"
    );
}

#[test]
fn table_mode_keeps_the_backends_id_and_binds_it() {
    let p = plugin(&MCP.replace(
        '}',
        r#", "envelope": false, "request_header": "x-session"}"#,
    ));
    let store = FakeStore::default();
    for table in p.tables() {
        table.prepare(&store).unwrap();
    }
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(B).header(H, "raw-id"),
        0,
    );
    assert!(matches!(x.decision, Decision::Issued { .. }));
    assert_eq!(x.envelope(), None, "the client gets the backend's value");
    let req = || FakeRequest::new().header("x-session", "raw-id");
    let x = exchange(&p, &store, req(), FakeResponse::ok(B), 1);
    assert_eq!(x.pinned_to(), Some(B));
    assert_eq!(
        X::set(&x.request, "x-session"),
        None,
        "the request header is not rewritten"
    );
    // Unknown ids are new sessions, not forgeries.
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-session", "other"),
        FakeResponse::new(404, Some(A)),
        2,
    );
    assert_eq!(x.found, Found::New(Miss::Unknown));
    // A 404 from the pinned endpoint forgets the binding.
    let x = exchange(&p, &store, req(), FakeResponse::new(404, Some(B)), 3);
    assert!(matches!(
        x.decision,
        Decision::Ended {
            reason: EndReason::NotFound,
            ..
        }
    ));
    assert_eq!(
        exchange(&p, &store, req(), FakeResponse::new(404, Some(A)), 4).found,
        Found::New(Miss::Unknown)
    );
}

#[test]
fn the_fields_of_the_type_are_checked() {
    for (json, field) in [
        (
            r#"{"type": "learn", "learn_from": "header", "envelope": false}"#,
            "envelope",
        ),
        (
            r#"{"type": "cookie", "request_header": "x"}"#,
            "request_header",
        ),
        (
            r#"{"type": "learn", "learn_from": "response_header", "session_name": "m", "envelope": false, "keys": ["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]}"#,
            "keys",
        ),
        (
            r#"{"type": "learn", "learn_from": "response_header", "session_name": "m", "cookie": {}}"#,
            "cookie",
        ),
        (
            r#"{"type": "learn", "learn_from": "response_header", "session_name": "cookie"}"#,
            "session_name",
        ),
        (
            r#"{"type": "learn", "learn_from": "response_header", "session_name": "m", "request_header": "x-tether-host"}"#,
            "request_header",
        ),
    ] {
        let e = Config::parse(json.as_bytes()).expect_err(json);
        assert_eq!(e.field, field, "{json}: {e}");
    }
}

/// A stream's end that records the session's use writes its bucket, and that write lets the
/// bucket's expired bindings go: its report says so, for the gauges.
#[test]
fn a_stream_end_reports_the_expired_bindings_its_write_let_go() {
    // One bucket (8 sessions), a touch interval of 10 s.
    let p = plugin(&MCP.replace('}', r#", "idle_timeout": "40s", "max_sessions": 8}"#));
    let store = FakeStore::default();
    for table in p.tables() {
        table.prepare(&store).unwrap();
    }
    for id in ["old-1", "old-2", "old-3"] {
        initialize(&p, &store, B, id, 0);
    }
    let env = initialize(&p, &store, A, "s1", 30_000);
    // At 35 s the request finds its record fresh; the others are 35 s idle, not expired.
    let plan = p.on_request(None, &mut call(&env), &store, 35_000);
    let stream = plan.stream.unwrap();
    let action = p.on_response(
        &stream,
        &mut FakeResponse::ok(A).header(H, "s1"),
        &store,
        35_000,
        &mut SystemEntropy,
    );
    assert_eq!(action.writes.bindings_delta, 0);
    // The stream ends at 50 s: a use 20 s after the last write, and the others are 50 s idle.
    let writes = p.on_stream_end(&stream, &store, 50_000);
    assert_eq!(writes.bindings_delta, -3);
    assert_eq!(
        writes
            .endpoint_deltas
            .iter()
            .map(|(e, d)| (e.to_string(), *d))
            .collect::<Vec<_>>(),
        vec![(B.to_string(), -3)]
    );
    let x = exchange(&p, &store, call(&env), FakeResponse::ok(A), 60_000);
    assert_eq!(x.pinned_to(), Some(A), "the session itself stays");
}
