//! The policies' request and response paths, driven through the compiled plugin as the adapter
//! drives them, against the shared test doubles.

use super::*;
use crate::config::Config;
use crate::entropy::SystemEntropy;
use crate::plugin::{Plugin, RequestPlan};
use crate::table::{Store, WriteError, SLOTS_PER_BUCKET};
use crate::testing::{FakeRequest, FakeResponse, FakeStore};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const A: &str = "127.0.0.1:8081";
const B: &str = "127.0.0.1:8082";
const SECRET: [u8; 32] = [7; 32];
const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

fn plugin(json: &str) -> Plugin {
    plugin_with(json, &SECRET)
}

fn plugin_with(json: &str, secret: &[u8; 32]) -> Plugin {
    Plugin::new(&Config::parse(json.as_bytes()).unwrap(), secret)
}

struct Exchange<'a> {
    plan: RequestPlan<'a>,
    action: ResponseAction<'a>,
}

impl Exchange<'_> {
    fn found(&self) -> &Found {
        self.plan.stream.as_ref().unwrap().state.found()
    }

    fn pinned_to(&self) -> Option<&str> {
        match self.found() {
            Found::Pinned(p) => Some(&*p.endpoint),
            _ => None,
        }
    }

    /// The value the request phase set `name` to (`Some(None)`: removed it).
    fn request_header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.plan.ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set(n, v) if *n == name => Some(Some(v.as_slice())),
            HeaderOp::Remove(n) if *n == name => Some(None),
            _ => None,
        })
    }

    fn set_cookies(&self) -> Vec<String> {
        added(&self.action, "set-cookie")
    }

    /// `name=value` of the one Set-Cookie tether added.
    fn cookie_pair(&self) -> String {
        let all = self.set_cookies();
        assert_eq!(all.len(), 1, "{all:?}");
        all[0].split(';').next().unwrap().to_string()
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.action.ops.iter().rev().find_map(|op| match op {
            HeaderOp::Set(n, v) if *n == name => Some(String::from_utf8(v.clone()).unwrap()),
            _ => None,
        })
    }
}

fn added(action: &ResponseAction, name: &str) -> Vec<String> {
    action
        .ops
        .iter()
        .filter_map(|op| match op {
            HeaderOp::Add(n, v) if *n == name => Some(String::from_utf8(v.clone()).unwrap()),
            _ => None,
        })
        .collect()
}

fn exchange<'a>(
    p: &'a Plugin,
    store: &FakeStore,
    mut req: FakeRequest,
    mut resp: FakeResponse,
    now: u64,
) -> Exchange<'a> {
    exchange_on(p, store, None, &mut req, &mut resp, now)
}

fn exchange_on<'a>(
    p: &'a Plugin,
    store: &FakeStore,
    route: Option<&str>,
    req: &mut FakeRequest,
    resp: &mut FakeResponse,
    now: u64,
) -> Exchange<'a> {
    let plan = p.on_request(route, req, store, now);
    let action = match &plan.stream {
        Some(stream) => p.on_response(stream, resp, store, now, &mut SystemEntropy),
        None => ResponseAction::new(Decision::OutsidePath),
    };
    Exchange { plan, action }
}

fn prepared(p: &Plugin) -> FakeStore {
    let store = FakeStore::default();
    for t in p.tables() {
        t.prepare(&store).unwrap();
    }
    store
}

fn new_cookie(p: &Plugin, store: &FakeStore, endpoint: &str, now: u64) -> String {
    exchange(
        p,
        store,
        FakeRequest::new(),
        FakeResponse::ok(endpoint),
        now,
    )
    .cookie_pair()
}

#[test]
fn cookie_new_session_then_pinned() {
    let p = plugin("{}");
    let store = FakeStore::default();
    let x = exchange(&p, &store, FakeRequest::new(), FakeResponse::ok(A), 1_000);
    assert_eq!(x.found(), &Found::New(Miss::NoToken));
    assert!(matches!(x.action.decision, Decision::Issued { ref endpoint, .. } if &**endpoint == A));
    let pair = x.cookie_pair();
    assert!(pair.starts_with("tether="));
    assert!(!pair.contains("8081") && !pair.contains("127.0.0.1"));
    assert_eq!(store.sets.get(), 0, "cookie sessions store nothing");

    let req = FakeRequest::new().cookie(format!("a=1; {pair}; b=2"));
    let x = exchange(&p, &store, req, FakeResponse::ok(A), 2_000);
    assert_eq!(x.pinned_to(), Some(A));
    assert_eq!(x.request_header("x-tether-host"), Some(Some(A.as_bytes())));
    assert_eq!(
        x.request_header("cookie"),
        Some(Some(&b"a=1; b=2"[..])),
        "our cookie does not reach the backend"
    );
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    assert!(x.set_cookies().is_empty(), "no Set-Cookie on a hit");
}

/// Issue #12, defect 4: with `Cookie: a=1` and then `Cookie: tether=<valid>`, the session was
/// not pinned and the token reached the backend; with the token first, the backend received no
/// Cookie at all.
#[test]
fn every_cookie_field_is_read_and_the_others_pass_on() {
    let p = plugin("{}");
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, B, 0);
    let second = FakeRequest::new().cookie("a=1").cookie(&pair);
    let x = exchange(&p, &store, second, FakeResponse::ok(B), 1);
    assert_eq!(x.pinned_to(), Some(B), "pinned by the second field");
    assert!(x.set_cookies().is_empty(), "no new cookie");
    assert_eq!(x.request_header("cookie"), Some(Some(&b"a=1"[..])));
    let first = FakeRequest::new()
        .cookie(&pair)
        .cookie("a=1")
        .cookie("b=2; c=3");
    let x = exchange(&p, &store, first, FakeResponse::ok(B), 2);
    assert_eq!(x.pinned_to(), Some(B));
    assert_eq!(
        x.request_header("cookie"),
        Some(Some(&b"a=1; b=2; c=3"[..])),
        "the application's cookies reach it"
    );
    let only = FakeRequest::new().cookie(&pair);
    let x = exchange(&p, &store, only, FakeResponse::ok(B), 3);
    assert_eq!(
        x.request_header("cookie"),
        Some(None),
        "nothing left: removed"
    );
    let none_ours = FakeRequest::new().cookie("a=1").cookie("b=2");
    let x = exchange(&p, &store, none_ours, FakeResponse::ok(B), 4);
    assert_eq!(x.request_header("cookie"), None, "left as it was");
}

/// Issue #12, defect 5: with `cookie.path: "/app"`, a request to `/other` or `/favicon.ico`
/// got a new `Set-Cookie: tether=...; Path=/app` that replaced the user's session.
#[test]
fn requests_outside_the_cookies_path_neither_issue_nor_pin() {
    let p = plugin(r#"{"cookie": {"path": "/app"}}"#);
    let store = FakeStore::default();
    let x = exchange(
        &p,
        &store,
        FakeRequest::get("/app/cart"),
        FakeResponse::ok(A),
        0,
    );
    let pair = x.cookie_pair();
    assert!(x.set_cookies()[0].contains("Path=/app"));
    for path in ["/favicon.ico", "/other", "/apple", "/"] {
        let x = exchange(&p, &store, FakeRequest::get(path), FakeResponse::ok(B), 1);
        assert_eq!(x.found(), &Found::OutsidePath, "{path}");
        assert!(x.set_cookies().is_empty(), "{path}: {:?}", x.set_cookies());
        assert_eq!(x.action.decision, Decision::OutsidePath);
        // A client that sends the cookie there anyway is not pinned by it either.
        let x = exchange(
            &p,
            &store,
            FakeRequest::get(path).cookie(&pair),
            FakeResponse::ok(B),
            2,
        );
        assert_eq!(x.found(), &Found::OutsidePath, "{path}");
        assert_eq!(x.request_header("x-tether-host"), None);
    }
    for path in ["/app", "/app/", "/app/x?y=1"] {
        let x = exchange(
            &p,
            &store,
            FakeRequest::get(path).cookie(&pair),
            FakeResponse::ok(A),
            3,
        );
        assert_eq!(x.pinned_to(), Some(A), "{path}");
    }
}

#[test]
fn tokens_from_another_key_or_garbage_are_not_adopted() {
    let p = plugin("{}");
    let other = plugin_with("{}", &[9; 32]);
    let store = FakeStore::default();
    let foreign = new_cookie(&other, &store, A, 0);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&foreign),
        FakeResponse::ok(B),
        0,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
    assert_ne!(x.cookie_pair(), foreign);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie("tether=../../etc"),
        FakeResponse::ok(A),
        0,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
}

#[test]
fn replicas_sharing_keys_agree() {
    let json = format!(r#"{{"keys": ["{K1}"]}}"#);
    let one = plugin_with(&json, &[1; 32]);
    let two = plugin_with(&json, &[2; 32]);
    let pair = new_cookie(&one, &FakeStore::default(), B, 0);
    let x = exchange(
        &two,
        &FakeStore::default(),
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(B),
        10,
    );
    assert_eq!(x.pinned_to(), Some(B));
}

/// Issue #12, defect 2: rotating keys (`[new, old]`) changed the secret learned ids were
/// hashed with, and every `learn` and `source_ip` binding was forgotten.
#[test]
fn rotating_keys_keeps_every_table_binding_and_token_session() {
    let before = format!(
        r#"{{"keys": ["{K1}"], "routes": {{
        "learn": {{"type": "learn", "session_name": "JSESSIONID"}},
        "hdr": {{"type": "learn", "learn_from": "header", "session_name": "x-sid", "keys": null}},
        "ip": {{"type": "source_ip", "keys": null}}}}}}"#
    );
    let after = before.replace(&format!(r#"["{K1}"]"#), &format!(r#"["{K2}", "{K1}"]"#));
    let old = plugin(&before);
    let store = prepared(&old);
    let cookie = new_cookie(&old, &store, B, 0);
    let on = |p: &Plugin, route: &str, req: FakeRequest, served: &str, now: u64| {
        let (mut req, mut resp) = (req, FakeResponse::ok(served));
        exchange_on(p, &store, Some(route), &mut req, &mut resp, now)
            .pinned_to()
            .map(str::to_string)
    };
    let app = FakeResponse::ok(A).set_cookie("JSESSIONID=j1; Path=/");
    let (mut req, mut resp) = (FakeRequest::new(), app);
    exchange_on(&old, &store, Some("learn"), &mut req, &mut resp, 0);
    on(&old, "hdr", FakeRequest::new().header("x-sid", "s1"), A, 0);
    on(
        &old,
        "ip",
        FakeRequest::new().from_address(Some("10.0.0.9:1")),
        A,
        0,
    );

    let new = plugin(&after);
    let x = exchange(
        &new,
        &store,
        FakeRequest::new().cookie(&cookie),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(
        x.pinned_to(),
        Some(B),
        "token sessions open under the old key"
    );
    let pinned = on(
        &new,
        "learn",
        FakeRequest::new().cookie("JSESSIONID=j1"),
        B,
        1,
    );
    assert_eq!(pinned.as_deref(), Some(A), "learned application cookie");
    let pinned = on(&new, "hdr", FakeRequest::new().header("x-sid", "s1"), B, 1);
    assert_eq!(pinned.as_deref(), Some(A), "learned header");
    let pinned = on(
        &new,
        "ip",
        FakeRequest::new().from_address(Some("10.0.0.9:2")),
        B,
        1,
    );
    assert_eq!(pinned.as_deref(), Some(A), "client address");
    // New tokens are sealed with the new key: the old key alone no longer opens them.
    let fresh = new_cookie(&new, &store, B, 2);
    let x = exchange(
        &old,
        &store,
        FakeRequest::new().cookie(&fresh),
        FakeResponse::ok(A),
        3,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
}

#[test]
fn idle_and_absolute_expiry_with_refresh() {
    let p = plugin(r#"{"idle_timeout": "2s", "absolute_timeout": "5s"}"#);
    let store = FakeStore::default();
    let mut pair = new_cookie(&p, &store, A, 0);
    let mut refreshes = 0;
    for now in (250..4_900).step_by(250) {
        let x = exchange(
            &p,
            &store,
            FakeRequest::new().cookie(&pair),
            FakeResponse::ok(A),
            now,
        );
        assert_eq!(x.pinned_to(), Some(A), "at {now} ms");
        if !x.set_cookies().is_empty() {
            refreshes += 1;
            pair = x.cookie_pair();
        }
    }
    // Refreshed every quarter of the idle timeout, not on every response.
    assert!((8..=10).contains(&refreshes), "{refreshes} refreshes");
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(A),
        5_000,
    );
    assert_eq!(x.found(), &Found::New(Miss::Expired));
    let fresh = x.cookie_pair();
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&fresh),
        FakeResponse::ok(A),
        7_000,
    );
    assert_eq!(x.found(), &Found::New(Miss::Expired));
}

#[test]
fn rebind_when_another_endpoint_served() {
    let p = plugin(r#"{"absolute_timeout": "1h", "cookie": {"lifetime_type": "permanent"}}"#);
    let store = FakeStore::default();
    let old = new_cookie(&p, &store, A, 0);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&old),
        FakeResponse::ok(B),
        600_000,
    );
    assert!(
        matches!(x.action.decision, Decision::Rebound { ref from, ref to } if &**from == A && &**to == B)
    );
    assert!(
        x.set_cookies()[0].contains("Max-Age=3000"),
        "what is left of the absolute timeout: {:?}",
        x.set_cookies()
    );
    let new = x.cookie_pair();
    assert_ne!(new, old);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&new),
        FakeResponse::ok(B),
        600_001,
    );
    assert_eq!(x.pinned_to(), Some(B));
    assert!(x.set_cookies().is_empty());
}

/// Issue #12, defect 1: Envoy's own 5xx after it chose the pinned endpoint (a route timeout,
/// a circuit breaker's overflow, a reset by the endpoint after the request went out) ended the
/// session with `Set-Cookie: tether=; Max-Age=0`. A live endpoint keeps its sessions.
#[test]
fn envoys_own_replies_keep_the_session() {
    for json in [
        "{}".to_string(),
        r#"{"type": "header", "session_name": "x-s"}"#.to_string(),
        r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#.to_string(),
        r#"{"type": "learn", "session_name": "JSESSIONID"}"#.to_string(),
        r#"{"type": "source_ip"}"#.to_string(),
    ] {
        let p = plugin(&json);
        let store = prepared(&p);
        let x = exchange(
            &p,
            &store,
            FakeRequest::new().header("x-sid", "s1"),
            FakeResponse::ok(A).set_cookie("JSESSIONID=j1"),
            0,
        );
        let session = |req: FakeRequest| {
            let mut req = req.header("x-sid", "s1").cookie("JSESSIONID=j1");
            if let Some(set) = x.set_cookies().first() {
                req = req.cookie(set.split(';').next().unwrap());
            }
            if let Some(token) = x.response_header("x-s") {
                req = req.header("x-s", token);
            }
            req
        };
        for details in [
            "response_timeout",
            "upstream_per_try_timeout",
            "upstream_reset_before_response_started{overflow}",
            "upstream_reset_before_response_started{connection_termination}",
            "upstream_reset_after_response_started{protocol_error}",
        ] {
            let y = exchange(
                &p,
                &store,
                session(FakeRequest::new()),
                FakeResponse::envoy(504, Some(A), details),
                1,
            );
            assert_eq!(y.pinned_to(), Some(A), "{json}");
            assert_eq!(
                y.action.decision,
                Decision::Kept {
                    endpoint: A.into(),
                    details: details.into()
                },
                "{json}"
            );
            assert!(
                y.action.ops.is_empty(),
                "{json} {details}: {:?}",
                y.action.ops
            );
        }
        let z = exchange(
            &p,
            &store,
            session(FakeRequest::new()),
            FakeResponse::ok(A),
            2,
        );
        assert_eq!(z.pinned_to(), Some(A), "{json}: still pinned afterwards");
        assert!(matches!(z.action.decision, Decision::Hit { .. }), "{json}");
    }
}

#[test]
fn a_session_no_endpoint_can_serve_is_let_go() {
    let unreachable = || {
        FakeResponse::envoy(
            503,
            Some(A),
            "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
        )
    };
    let p = plugin("{}");
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, A, 0);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        unreachable(),
        1,
    );
    assert!(matches!(x.action.decision, Decision::Dropped { .. }));
    assert!(
        x.set_cookies()[0].contains("Max-Age=0"),
        "{:?}",
        x.set_cookies()
    );
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::envoy(503, None, "no_healthy_upstream"),
        1,
    );
    assert!(matches!(x.action.decision, Decision::Dropped { .. }));

    let p = plugin(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = prepared(&p);
    let req = || FakeRequest::new().header("x-sid", "s1");
    exchange(&p, &store, req(), FakeResponse::ok(A), 0);
    let x = exchange(&p, &store, req(), unreachable(), 1);
    assert!(matches!(x.action.decision, Decision::Dropped { .. }));
    assert_eq!(x.action.writes.bindings_delta, -1);
    let x = exchange(&p, &store, req(), FakeResponse::ok(B), 2);
    assert_eq!(x.found(), &Found::New(Miss::Unknown), "the table forgot it");
}

#[test]
fn strict_refuses_instead_of_moving() {
    let p = plugin(
        r#"{"on_unavailable": "strict", "unavailable_status": 502, "retry_after": "1500ms"}"#,
    );
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, A, 0);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(A),
        1,
    );
    assert_eq!(
        x.request_header("x-envoy-max-retries"),
        Some(Some(&b"0"[..]))
    );
    assert_eq!(x.request_header("x-tether-strict"), Some(Some(&b"1"[..])));
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    // A could not be reached.
    let failed = FakeResponse::envoy(
        503,
        Some(A),
        "upstream_reset_before_response_started{connection_failure}",
    );
    let x = exchange(&p, &store, FakeRequest::new().cookie(&pair), failed, 2);
    assert_eq!(x.action.refuse, Some((502, 2)));
    assert!(x.set_cookies().is_empty());
    // A left the cluster and the fallback chose B: refused all the same, not moved.
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(B),
        3,
    );
    assert!(matches!(x.action.decision, Decision::Refused { .. }));
    assert!(x.set_cookies().is_empty());
    // A timeout is Envoy's answer, not the endpoint's absence: passed on, session kept.
    let timeout = FakeResponse::envoy(504, Some(A), "response_timeout");
    let x = exchange(&p, &store, FakeRequest::new().cookie(&pair), timeout, 4);
    assert_eq!(x.action.refuse, None);
    assert!(matches!(x.action.decision, Decision::Kept { .. }));
}

#[test]
fn header_type_carries_the_token_in_headers() {
    let p = plugin(r#"{"type": "header", "session_name": "X-Session"}"#);
    let store = FakeStore::default();
    let x = exchange(&p, &store, FakeRequest::new(), FakeResponse::ok(B), 0);
    let token = x.response_header("x-session").unwrap();
    assert!(x.set_cookies().is_empty());
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-session", &token),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(x.pinned_to(), Some(B));
    assert_eq!(
        x.request_header("x-session"),
        Some(None),
        "removed before the backend"
    );
    assert!(x.action.ops.is_empty());
}

/// Issue #12, defect 9: a `header` token opened as a `cookie` token of the same name.
#[test]
fn a_header_token_is_no_cookie_token() {
    let keys = format!(r#""keys": ["{K1}"], "session_name": "sid""#);
    let header = plugin(&format!(r#"{{"type": "header", {keys}}}"#));
    let cookie = plugin(&format!(r#"{{"type": "cookie", {keys}}}"#));
    let store = FakeStore::default();
    let token = exchange(&header, &store, FakeRequest::new(), FakeResponse::ok(B), 0)
        .response_header("sid")
        .unwrap();
    let x = exchange(
        &cookie,
        &store,
        FakeRequest::new().cookie(format!("sid={token}")),
        FakeResponse::ok(A),
        1,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
    let pair = new_cookie(&cookie, &store, A, 2);
    let value = pair.split_once('=').unwrap().1;
    let x = exchange(
        &header,
        &store,
        FakeRequest::new().header("sid", value),
        FakeResponse::ok(B),
        3,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
}

/// Issue #12, defect 7: a backend's `Set-Cookie` of tether's cookie name reached the client
/// and replaced its session. tether owns the name.
#[test]
fn a_backend_cannot_clobber_tethers_cookie_or_header() {
    let p = plugin("{}");
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, A, 0);
    let evil = || {
        FakeResponse::ok(A)
            .set_cookie("app=1; Path=/")
            .set_cookie("tether=forged; Path=/")
            .set_cookie("other=2")
    };
    let x = exchange(&p, &store, FakeRequest::new().cookie(&pair), evil(), 1);
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    assert_eq!(x.action.backend_cookies_removed, 1);
    assert_eq!(x.action.ops[0], HeaderOp::remove("set-cookie"));
    assert_eq!(x.set_cookies(), vec!["app=1; Path=/", "other=2"]);
    let x = exchange(&p, &store, FakeRequest::new(), evil(), 2);
    let cookies = x.set_cookies();
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    assert!(cookies[2].starts_with("tether=") && !cookies[2].starts_with("tether=forged"));
    let clean = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(A).set_cookie("app=1"),
        3,
    );
    assert!(clean.action.ops.is_empty(), "other cookies are left alone");

    let p = plugin(r#"{"type": "header", "session_name": "x-s"}"#);
    let token = exchange(&p, &store, FakeRequest::new(), FakeResponse::ok(A), 0)
        .response_header("x-s")
        .unwrap();
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-s", token),
        FakeResponse::ok(A).header("x-s", "forged"),
        1,
    );
    assert_eq!(x.action.ops, vec![HeaderOp::remove("x-s")]);
    assert_eq!(x.action.backend_cookies_removed, 1);

    let p = plugin(r#"{"type": "learn", "session_name": "JSESSIONID"}"#);
    let store = prepared(&p);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(A)
            .set_cookie("JSESSIONID=j")
            .set_cookie("tether-JSESSIONID=forged"),
        0,
    );
    let cookies = x.set_cookies();
    assert_eq!(
        cookies[0], "JSESSIONID=j",
        "the application's own cookie is the application's"
    );
    assert!(cookies[1].starts_with("tether-JSESSIONID=") && !cookies[1].contains("forged"));
    assert_eq!(cookies.len(), 2);
    assert_eq!(x.action.backend_cookies_removed, 1);
}

#[test]
fn learn_from_application_cookie() {
    let json = r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#;
    let p = plugin(json);
    let store = prepared(&p);
    // The application starts a session on B.
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(B).set_cookie("JSESSIONID=abc; Path=/"),
        0,
    );
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    let companion = x.cookie_pair();
    assert!(
        companion.starts_with("tether-JSESSIONID="),
        "tether never issues the application's cookie: {companion}"
    );
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie("JSESSIONID=abc"),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(x.pinned_to(), Some(B));
    assert_eq!(
        x.request_header("cookie"),
        None,
        "the application's cookie reaches the application"
    );
    let both = format!("JSESSIONID=abc; {companion}");
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&both),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(
        x.request_header("cookie"),
        Some(Some(&b"JSESSIONID=abc"[..])),
        "the companion stays with tether"
    );

    // Another replica (same keys, empty table) follows the companion, and learns the binding.
    let replica = plugin(json);
    let other = prepared(&replica);
    let x = exchange(
        &replica,
        &other,
        FakeRequest::new().cookie(&both),
        FakeResponse::ok(B),
        2,
    );
    assert_eq!(x.pinned_to(), Some(B));
    let x = exchange(
        &replica,
        &other,
        FakeRequest::new().cookie("JSESSIONID=abc"),
        FakeResponse::ok(B),
        3,
    );
    assert_eq!(x.pinned_to(), Some(B), "adopted into this replica's table");
    // A companion does not open next to another id.
    let stolen = format!("JSESSIONID=zzz; {companion}");
    let x = exchange(
        &replica,
        &prepared(&replica),
        FakeRequest::new().cookie(&stolen),
        FakeResponse::ok(A),
        4,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
    // A request without an id has nothing to bind.
    let x = exchange(&p, &store, FakeRequest::new(), FakeResponse::ok(A), 3);
    assert_eq!(
        x.action.decision,
        Decision::Unbound {
            miss: Miss::NoToken
        }
    );
}

/// Issue #12, defect 9: a learned `Set-Cookie` with an empty `Max-Age=` was taken as a
/// deletion, and one with a past `Expires` was learned as an id.
#[test]
fn learned_cookies_are_read_as_browsers_read_them() {
    let p = plugin(r#"{"type": "learn", "session_name": "SID"}"#);
    let store = prepared(&p);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(A).set_cookie("SID=one; Max-Age="),
        0,
    );
    assert!(
        matches!(x.action.decision, Decision::Issued { .. }),
        "{:?}",
        x.action.decision
    );
    let x = exchange(
        &p,
        &store,
        FakeRequest::new(),
        FakeResponse::ok(A).set_cookie("SID=two; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        0,
    );
    assert_eq!(
        x.action.decision,
        Decision::Unbound {
            miss: Miss::NoToken
        }
    );
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie("SID=two"),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(
        x.found(),
        &Found::New(Miss::Unknown),
        "a deleted id was never bound"
    );
}

#[test]
fn learn_from_header_and_query_bind_on_first_sight() {
    let p = plugin(r#"{"type": "learn", "learn_from": "header", "session_name": "x-session-id"}"#);
    let store = prepared(&p);
    let req = || FakeRequest::new().header("x-session-id", "conversation-42");
    let x = exchange(&p, &store, req(), FakeResponse::ok(B), 0);
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    assert_eq!(
        exchange(&p, &store, req(), FakeResponse::ok(B), 1).pinned_to(),
        Some(B)
    );

    let p = plugin(r#"{"type": "learn", "learn_from": "query", "session_name": "sid"}"#);
    let store = prepared(&p);
    let x = exchange(
        &p,
        &store,
        FakeRequest::get("/chat?x=1&sid=s-9"),
        FakeResponse::ok(A),
        0,
    );
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    let x = exchange(
        &p,
        &store,
        FakeRequest::get("/other?sid=s-9#frag"),
        FakeResponse::ok(A),
        1,
    );
    assert_eq!(x.pinned_to(), Some(A));
    let x = exchange(
        &p,
        &store,
        FakeRequest::get("/other?sid=s-10"),
        FakeResponse::ok(B),
        2,
    );
    assert_eq!(x.found(), &Found::New(Miss::Unknown));
}

/// Learned ids longer than MAX_LEARNED_LEN are never bound, and said so.
#[test]
fn an_id_over_the_limit_is_not_bound() {
    let p = plugin(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = prepared(&p);
    let at_limit = "i".repeat(MAX_LEARNED_LEN);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-sid", &at_limit),
        FakeResponse::ok(A),
        0,
    );
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    let over = "i".repeat(MAX_LEARNED_LEN + 1);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-sid", &over),
        FakeResponse::ok(A),
        0,
    );
    assert_eq!(x.found(), &Found::New(Miss::TooLong));
    assert_eq!(
        x.action.decision,
        Decision::Unbound {
            miss: Miss::TooLong
        }
    );
    assert_eq!(
        x.action.decision.to_string(),
        "decision=unbound reason=id_too_long"
    );
}

#[test]
fn source_ip_with_and_without_trusted_hops() {
    let check = |p: &Plugin, store: &FakeStore, req: FakeRequest, served: &str, now: u64| {
        exchange(p, store, req, FakeResponse::ok(served), now)
            .pinned_to()
            .map(str::to_string)
    };
    let p = plugin(r#"{"type": "source_ip"}"#);
    let store = prepared(&p);
    let peer = |a: &str| FakeRequest::new().from_address(Some(a));
    check(&p, &store, peer("10.0.0.1:5555"), B, 0);
    assert_eq!(
        check(&p, &store, peer("10.0.0.1:6666"), B, 1).as_deref(),
        Some(B)
    );
    assert_eq!(
        check(&p, &store, peer("[::ffff:10.0.0.1]:7"), B, 1).as_deref(),
        Some(B)
    );
    assert_eq!(check(&p, &store, peer("10.0.0.2:6666"), A, 2), None);

    // Envoy (use_remote_address: true) appended the peer: hop 0. Hop 1 is what the trusted
    // proxy saw.
    let p = plugin(r#"{"type": "source_ip", "trusted_hops": 1}"#);
    let store = prepared(&p);
    let behind = |xff: &str| {
        FakeRequest::new()
            .from_address(Some("127.0.0.1:1"))
            .header("x-forwarded-for", xff)
    };
    check(&p, &store, behind("1.1.1.1, 203.0.113.9, 127.0.0.1"), A, 0);
    assert_eq!(
        check(&p, &store, behind("6.6.6.6, 203.0.113.9, 127.0.0.1"), A, 1).as_deref(),
        Some(A),
        "spoofed left entries do not matter"
    );
    assert_eq!(
        check(&p, &store, behind("203.0.113.10, 127.0.0.1"), B, 2),
        None
    );
}

#[test]
fn client_ip_parsing() {
    let mut r = FakeRequest::new()
        .from_address(Some("192.0.2.1:80"))
        .header("x-forwarded-for", "a, 198.51.100.7")
        .header("x-forwarded-for", "2001:db8::1, 192.0.2.1");
    assert_eq!(client_ip(&mut r, 0), "192.0.2.1".parse().ok());
    assert_eq!(
        client_ip(&mut r, 1),
        "2001:db8::1".parse().ok(),
        "fields read in order"
    );
    assert_eq!(client_ip(&mut r, 2), "198.51.100.7".parse().ok());
    assert_eq!(
        client_ip(&mut r, 3),
        "192.0.2.1".parse().ok(),
        "malformed entry: the peer"
    );
    assert_eq!(
        client_ip(&mut r, 5),
        "192.0.2.1".parse().ok(),
        "too few entries: the peer"
    );
    let mut garbage = FakeRequest::new()
        .from_address(Some("x"))
        .header("x-forwarded-for", "\u{ff}");
    assert_eq!(client_ip(&mut garbage, 1), None);
}

#[test]
fn cluster_pins_travel_with_the_session() {
    let p = plugin(r#"{"upstream": {"cluster_header": "x-tether-cluster"}}"#);
    let store = FakeStore::default();
    let mut req = FakeRequest::new();
    let mut resp = FakeResponse::ok(B).in_cluster(Some("app-canary"));
    let pair = exchange_on(&p, &store, None, &mut req, &mut resp, 0).cookie_pair();
    assert_eq!(resp.cluster_reads.get(), 1);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(B),
        1,
    );
    assert_eq!(
        x.request_header("x-tether-cluster"),
        Some(Some(&b"app-canary"[..]))
    );
    assert_eq!(x.request_header("x-tether-host"), Some(Some(B.as_bytes())));
    // Without the cluster header, the cluster is never asked for.
    let p = plugin("{}");
    let mut resp = FakeResponse::ok(B);
    exchange_on(&p, &store, None, &mut FakeRequest::new(), &mut resp, 0);
    assert_eq!(resp.cluster_reads.get(), 0);
}

#[test]
fn local_replies_record_nothing() {
    let p = plugin(r#"{"type": "source_ip"}"#);
    let store = prepared(&p);
    let writes = store.sets.get();
    let req = || FakeRequest::new().from_address(Some("10.0.0.1:1"));
    let x = exchange(&p, &store, req(), FakeResponse::new(404, None), 0);
    assert!(matches!(x.action.decision, Decision::Unserved { .. }));
    // Envoy's reply after a failed try names the endpoint it tried: a 5xx that did not come
    // from it binds nothing.
    let local = FakeResponse::envoy(
        503,
        Some(A),
        "upstream_reset_before_response_started{connection_failure}",
    );
    assert!(matches!(
        exchange(&p, &store, req(), local, 0).action.decision,
        Decision::Unserved { .. }
    ));
    assert_eq!(store.sets.get(), writes);
    // A 5xx the endpoint itself sent is its answer: the session is bound there.
    let app_error = FakeResponse::new(503, Some(A));
    assert!(matches!(
        exchange(&p, &store, req(), app_error, 0).action.decision,
        Decision::Issued { .. }
    ));
}

#[test]
fn the_pinned_endpoints_own_errors_are_still_hits() {
    let p = plugin("{}");
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, A, 0);
    for status in [503, 404, 500] {
        let x = exchange(
            &p,
            &store,
            FakeRequest::new().cookie(&pair),
            FakeResponse::new(status, Some(A)),
            1,
        );
        assert!(
            matches!(x.action.decision, Decision::Hit { .. }),
            "{status}: {:?}",
            x.action.decision
        );
    }
}

#[test]
fn table_write_failures_are_reported() {
    let p = plugin(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = prepared(&p);
    store.force_mismatches.set(usize::MAX);
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-sid", "a"),
        FakeResponse::ok(A),
        0,
    );
    assert_eq!(
        x.action.decision,
        Decision::WriteFailed(WriteError::Contended)
    );
    store.force_mismatches.set(0);
    // Issue #12, defect 9: an endpoint over 64 bytes was silently cut.
    let long = format!("[{}]:8080", "f".repeat(70));
    let x = exchange(
        &p,
        &store,
        FakeRequest::new().header("x-sid", "b"),
        FakeResponse::ok(&long),
        0,
    );
    assert_eq!(
        x.action.decision,
        Decision::WriteFailed(WriteError::TooLong)
    );
    assert_eq!(
        x.action.decision.to_string(),
        "decision=write_failed error=too_long"
    );
}

#[test]
fn sealing_failures_are_reported_with_their_cause() {
    struct Broken;
    impl Entropy for Broken {
        fn fill(&mut self, _: &mut [u8]) -> bool {
            false
        }
    }
    let p = plugin("{}");
    let store = FakeStore::default();
    let plan = p.on_request(None, &mut FakeRequest::new(), &store, 0);
    let stream = plan.stream.unwrap();
    let a = p.on_response(&stream, &mut FakeResponse::ok(A), &store, 0, &mut Broken);
    assert_eq!(a.decision, Decision::SealFailed(SealError::NoEntropy));
    assert!(a.ops.is_empty());
    let long = "e".repeat(300);
    let a = p.on_response(
        &stream,
        &mut FakeResponse::ok(&long),
        &store,
        0,
        &mut SystemEntropy,
    );
    assert_eq!(a.decision, Decision::SealFailed(SealError::TooLong));
}

#[test]
fn a_flood_of_new_ids_does_not_evict_sessions_that_came_back() {
    // One bucket of 8 slots. The active session is used every 200 ms, each time followed by a
    // never-seen id: more new ids than slots within LRU_TOUCH_MS.
    let p = plugin(
        r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid", "max_sessions": 8}"#,
    );
    let store = prepared(&p);
    let active = || FakeRequest::new().header("x-sid", "active");
    let first = exchange(&p, &store, active(), FakeResponse::ok(A), 0);
    assert!(matches!(first.action.decision, Decision::Issued { .. }));
    let mut t = 0;
    for i in 0..(2 * SLOTS_PER_BUCKET) {
        t += 200;
        let x = exchange(&p, &store, active(), FakeResponse::ok(A), t);
        assert!(
            matches!(x.action.decision, Decision::Hit { .. }),
            "round {i}: the active session lost its binding: {:?}",
            x.action.decision
        );
        let new = FakeRequest::new().header("x-sid", format!("flood-{i}"));
        let x = exchange(&p, &store, new, FakeResponse::ok(B), t + 1);
        assert!(matches!(x.action.decision, Decision::Issued { .. }));
    }
}

/// Issue #12, defect 6: sessions whose first return came within the same millisecond as their
/// first request were never marked as returned, and a flood evicted them.
#[test]
fn back_to_back_sessions_survive_a_flood() {
    let p = plugin(r#"{"type": "source_ip", "max_sessions": 8}"#);
    let store = prepared(&p);
    let from = |n: usize| {
        FakeRequest::new().from_address(Some(&format!("10.1.{}.{}:1", n / 250, n % 250)))
    };
    let active: Vec<usize> = (0..6).collect();
    for &n in &active {
        exchange(&p, &store, from(n), FakeResponse::ok(A), 1_000);
        let back = exchange(&p, &store, from(n), FakeResponse::ok(A), 1_000);
        assert!(matches!(
            back.action.decision,
            Decision::Hit {
                refreshed: true,
                ..
            }
        ));
    }
    for n in 100..400 {
        exchange(&p, &store, from(n), FakeResponse::ok(B), 1_001);
    }
    for &n in &active {
        let x = exchange(&p, &store, from(n), FakeResponse::ok(A), 1_002);
        assert_eq!(
            x.pinned_to(),
            Some(A),
            "active session {n} evicted by the flood"
        );
    }
}

#[test]
fn the_first_return_of_a_table_binding_is_written_back_at_once() {
    let p = plugin(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = prepared(&p);
    let req = || FakeRequest::new().header("x-sid", "s1");
    exchange(&p, &store, req(), FakeResponse::ok(A), 1_000);
    let after_bind = store.sets.get();
    // Well within LRU_TOUCH_MS: the first return is recorded, the second is not.
    exchange(&p, &store, req(), FakeResponse::ok(A), 1_010);
    assert_eq!(store.sets.get(), after_bind + 1, "first return written");
    exchange(&p, &store, req(), FakeResponse::ok(A), 1_020);
    assert_eq!(
        store.sets.get(),
        after_bind + 1,
        "later returns wait for the interval"
    );
    // Cookie sessions store nothing, first return or not.
    let c = plugin("{}");
    let s2 = FakeStore::default();
    let pair = new_cookie(&c, &s2, A, 0);
    let x = exchange(
        &c,
        &s2,
        FakeRequest::new().cookie(&pair),
        FakeResponse::ok(A),
        10,
    );
    assert!(
        x.set_cookies().is_empty(),
        "no token re-issued on a first return"
    );
    assert_eq!(s2.sets.get(), 0);
}

#[test]
fn owned_headers_are_removed_on_every_route_and_routes_choose_their_policy() {
    let p = plugin(
        r#"{"upstream": {"cluster_header": "x-tether-cluster"},
            "routes": {"off": {"disabled": true},
                       "api": {"type": "header", "session_name": "x-s", "upstream": {"host_header": "x-pin"}}}}"#,
    );
    assert!(p.needs_route_name());
    assert_eq!(
        p.owned_headers(),
        [
            "x-tether-strict",
            "x-tether-host",
            "x-tether-cluster",
            "x-pin"
        ]
    );
    let store = FakeStore::default();
    let forged = || {
        FakeRequest::new()
            .header("x-tether-host", A)
            .header("x-tether-cluster", "evil")
            .header("x-tether-strict", "1")
            .header("x-pin", A)
    };
    for route in [None, Some("off"), Some("api"), Some("unlisted")] {
        let plan = p.on_request(route, &mut forged(), &store, 0);
        assert_eq!(plan.forged_headers, 4, "{route:?}");
        for h in p.owned_headers() {
            assert!(plan.ops.contains(&HeaderOp::remove(h)), "{route:?}: {h}");
        }
        let kind = plan.stream.as_ref().map(|s| p.session_type(s).unwrap());
        let expected = match route {
            Some("off") => None,
            Some("api") => Some(SessionType::Header),
            _ => Some(SessionType::Cookie),
        };
        assert_eq!(kind, expected, "{route:?}");
    }
    assert_eq!(p.policy_for(Some("off")), None);
    assert!(!plugin("{}").needs_route_name());
    let clean = p.on_request(None, &mut FakeRequest::new(), &store, 0);
    assert_eq!(clean.forged_headers, 0);
    assert!(clean.ops.is_empty());
}

#[test]
fn policies_sharing_a_session_name_share_its_table() {
    let p = plugin(
        r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid",
            "routes": {"a": {}, "b": {}}}"#,
    );
    let store = prepared(&p);
    let (mut req, mut resp) = (FakeRequest::new().header("x-sid", "s"), FakeResponse::ok(B));
    exchange_on(&p, &store, Some("a"), &mut req, &mut resp, 0);
    let (mut req, mut resp) = (FakeRequest::new().header("x-sid", "s"), FakeResponse::ok(A));
    let x = exchange_on(&p, &store, Some("b"), &mut req, &mut resp, 1);
    assert_eq!(x.pinned_to(), Some(B), "one session across both routes");
    assert_eq!(
        store.data.borrow().len() as u64,
        p.tables().next().unwrap().bucket_count()
    );
    let _: &dyn Store = &store;
}

/// The response phase of a hit asks for two headers (`:status`, `Set-Cookie`), one property
/// (`upstream.address`) and never the whole header map unless the backend set cookies.
#[test]
fn a_hit_costs_two_header_reads_and_one_property() {
    let p = plugin("{}");
    let store = FakeStore::default();
    let pair = new_cookie(&p, &store, A, 0);
    let mut req = FakeRequest::new().cookie(&pair);
    let mut resp = FakeResponse::ok(A);
    let x = exchange_on(&p, &store, None, &mut req, &mut resp, 1);
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    assert_eq!(resp.header_reads.get(), 2);
    assert_eq!(resp.map_reads.get(), 0);
    assert_eq!(resp.upstream_reads.get(), 1);
    assert_eq!((resp.details_reads.get(), resp.cluster_reads.get()), (0, 0));
    let mut req = FakeRequest::new().cookie(&pair);
    let mut resp = FakeResponse::ok(A).set_cookie("app=1");
    exchange_on(&p, &store, None, &mut req, &mut resp, 2);
    assert_eq!(
        resp.map_reads.get(),
        1,
        "every Set-Cookie is read once one is there"
    );
}

/// The request phase reads only what its type needs: a session header and the owned headers one
/// at a time (no whole map), the path only for a cookie with a path other than `/`.
#[test]
fn requests_read_only_what_their_type_needs() {
    let store = FakeStore::default();
    let p = plugin(r#"{"type": "header", "session_name": "x-s"}"#);
    let mut req = FakeRequest::new().header("x-s", "t");
    p.on_request(None, &mut req, &store, 0);
    assert_eq!(
        (req.header_reads, req.map_reads),
        (3, 0),
        "x-s and two owned headers"
    );
    let p = plugin("{}");
    let mut req = FakeRequest::new().cookie("a=1");
    p.on_request(None, &mut req, &store, 0);
    assert_eq!(req.map_reads, 1, "every Cookie field, once");
    assert_eq!(req.header_reads, 2, "no :path for Path=/");
    let p = plugin(r#"{"cookie": {"path": "/app"}}"#);
    let mut req = FakeRequest::get("/other");
    p.on_request(None, &mut req, &store, 0);
    assert_eq!(
        (req.header_reads, req.map_reads),
        (3, 0),
        ":path, then nothing but the owned"
    );
}
