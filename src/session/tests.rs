use super::*;
use crate::config::PluginConfig;
use crate::table::fake::FakeStore;
use crate::token::SystemEntropy;
use std::collections::HashMap;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const A: &str = "127.0.0.1:8081";
const B: &str = "127.0.0.1:8082";
const KEY: [u8; 32] = [7; 32];

fn engine(json: &str) -> Engine {
    let config = PluginConfig::parse(json.as_bytes()).unwrap();
    Engine::new(config.default, KEY)
}

#[derive(Default, Clone)]
struct Req {
    headers: HashMap<String, Vec<u8>>,
    source: Option<String>,
}

impl Req {
    fn with(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.into(), value.as_bytes().to_vec());
        self
    }
}

impl Request for Req {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.headers.get(name).cloned()
    }
    fn source_address(&mut self) -> Option<String> {
        self.source.clone()
    }
}

struct Resp {
    status: Option<u16>,
    upstream: Option<String>,
    from_upstream: bool,
    cluster: Option<String>,
    set_cookies: Vec<Vec<u8>>,
}

impl Resp {
    fn served_by(endpoint: &str) -> Resp {
        Resp {
            status: Some(200),
            upstream: Some(endpoint.into()),
            from_upstream: true,
            cluster: Some("app".into()),
            set_cookies: vec![],
        }
    }
}

impl Response for Resp {
    fn upstream(&mut self) -> Option<String> {
        self.upstream.clone()
    }
    fn came_from_upstream(&mut self) -> bool {
        self.from_upstream
    }
    fn cluster(&mut self) -> Option<String> {
        self.cluster.clone()
    }
    fn set_cookies(&mut self) -> Vec<Vec<u8>> {
        self.set_cookies.clone()
    }
    fn status(&mut self) -> Option<u16> {
        self.status
    }
}

struct Exchange {
    state: RequestState,
    edits: RequestEdits,
    action: ResponseAction,
}

fn exchange(e: &Engine, store: &FakeStore, mut req: Req, mut resp: Resp, now: u64) -> Exchange {
    let (state, edits) = e.on_request(store, &mut req, now);
    let action = e.on_response(store, &state, &mut resp, now, &mut SystemEntropy);
    Exchange {
        state,
        edits,
        action,
    }
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

fn cookie_req(pair: &str) -> Req {
    Req::default().with("cookie", pair)
}

fn pinned_to(x: &Exchange) -> Option<&str> {
    match &x.state.found {
        Found::Pinned(p) => Some(p.endpoint.as_str()),
        Found::New(_) => None,
    }
}

#[test]
fn cookie_new_session_then_pinned() {
    let e = engine("{}");
    let store = FakeStore::default();
    let x = exchange(&e, &store, Req::default(), Resp::served_by(A), 1_000);
    assert_eq!(x.state.found, Found::New(Miss::NoToken));
    assert!(matches!(x.action.decision, Decision::Issued { ref endpoint, .. } if endpoint == A));
    let pair = cookie_pair(&x.action);
    assert!(pair.starts_with("tether="));
    assert!(!pair.contains("8081") && !pair.contains("127.0.0.1"));
    assert_eq!(store.sets.get(), 0, "cookie sessions store nothing");

    let x = exchange(
        &e,
        &store,
        cookie_req(&format!("a=1; {pair}; b=2")),
        Resp::served_by(A),
        2_000,
    );
    assert_eq!(pinned_to(&x), Some(A));
    assert_eq!(x.edits.host.as_deref(), Some(A));
    assert_eq!(
        x.edits.cookie.as_deref(),
        Some(&b"a=1; b=2"[..]),
        "our cookie does not reach the backend"
    );
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    assert_eq!(x.action.set_cookie, None, "no Set-Cookie on a hit");
}

#[test]
fn tokens_from_another_key_or_garbage_are_not_adopted() {
    let e = engine("{}");
    let other = Engine::new(PluginConfig::parse(b"{}").unwrap().default, [9; 32]);
    let store = FakeStore::default();
    let foreign =
        cookie_pair(&exchange(&other, &store, Req::default(), Resp::served_by(A), 0).action);
    let x = exchange(&e, &store, cookie_req(&foreign), Resp::served_by(B), 0);
    assert_eq!(x.state.found, Found::New(Miss::Unknown));
    assert_ne!(cookie_pair(&x.action), foreign);
    let x = exchange(
        &e,
        &store,
        cookie_req("tether=../../etc"),
        Resp::served_by(A),
        0,
    );
    assert_eq!(x.state.found, Found::New(Miss::Unknown));
}

#[test]
fn replicas_sharing_keys_agree() {
    let json = r#"{"keys": ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]}"#;
    let one = Engine::new(
        PluginConfig::parse(json.as_bytes()).unwrap().default,
        [1; 32],
    );
    let two = Engine::new(
        PluginConfig::parse(json.as_bytes()).unwrap().default,
        [2; 32],
    );
    let store = FakeStore::default();
    let pair = cookie_pair(&exchange(&one, &store, Req::default(), Resp::served_by(B), 0).action);
    let x = exchange(
        &two,
        &FakeStore::default(),
        cookie_req(&pair),
        Resp::served_by(B),
        10,
    );
    assert_eq!(pinned_to(&x), Some(B));
}

#[test]
fn idle_and_absolute_expiry_with_refresh() {
    let e = engine(r#"{"idle_timeout": "2s", "absolute_timeout": "5s"}"#);
    let store = FakeStore::default();
    let mut pair = cookie_pair(&exchange(&e, &store, Req::default(), Resp::served_by(A), 0).action);
    let mut refreshes = 0;
    for now in (250..4_900).step_by(250) {
        let x = exchange(&e, &store, cookie_req(&pair), Resp::served_by(A), now);
        assert_eq!(pinned_to(&x), Some(A), "at {now} ms");
        if let Some(set) = &x.action.set_cookie {
            refreshes += 1;
            pair = set.split(';').next().unwrap().to_string();
        }
    }
    // Refreshed every quarter of the idle timeout, not on every response.
    assert!((8..=10).contains(&refreshes), "{refreshes} refreshes");
    let x = exchange(&e, &store, cookie_req(&pair), Resp::served_by(A), 5_000);
    assert_eq!(x.state.found, Found::New(Miss::Expired));
    let fresh = cookie_pair(&x.action);
    let x = exchange(
        &e,
        &store,
        cookie_req(&fresh),
        Resp::served_by(A),
        5_000 + 2_000,
    );
    assert_eq!(x.state.found, Found::New(Miss::Expired));
}

#[test]
fn rebind_when_another_endpoint_served() {
    let e = engine(r#"{"absolute_timeout": "1h", "cookie": {"lifetime_type": "permanent"}}"#);
    let store = FakeStore::default();
    let old = cookie_pair(&exchange(&e, &store, Req::default(), Resp::served_by(A), 0).action);
    let x = exchange(&e, &store, cookie_req(&old), Resp::served_by(B), 600_000);
    assert!(
        matches!(x.action.decision, Decision::Rebound { ref from, ref to } if from == A && to == B)
    );
    let set_cookie = x.action.set_cookie.clone().unwrap();
    assert!(
        set_cookie.contains("Max-Age=3000"),
        "what is left of the absolute timeout: {set_cookie}"
    );
    let new = cookie_pair(&x.action);
    assert_ne!(new, old);
    let x = exchange(&e, &store, cookie_req(&new), Resp::served_by(B), 600_001);
    assert_eq!(pinned_to(&x), Some(B));
    assert_eq!(x.action.set_cookie, None);
}

#[test]
fn strict_refuses_instead_of_moving() {
    let e = engine(
        r#"{"on_unavailable": "strict", "unavailable_status": 502, "retry_after": "1500ms"}"#,
    );
    let store = FakeStore::default();
    let pair = cookie_pair(&exchange(&e, &store, Req::default(), Resp::served_by(A), 0).action);
    let x = exchange(&e, &store, cookie_req(&pair), Resp::served_by(A), 1);
    assert!(x.edits.no_retries);
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
    // The attempt at A failed: Envoy names A but the reply is its own (always a 5xx).
    let failed = Resp {
        status: Some(503),
        from_upstream: false,
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, cookie_req(&pair), failed, 2);
    assert_eq!(x.action.refuse, Some((502, 2)));
    assert_eq!(x.action.set_cookie, None);
    // A left the cluster and the fallback chose B: refused all the same, not moved.
    let x = exchange(&e, &store, cookie_req(&pair), Resp::served_by(B), 3);
    assert!(matches!(x.action.decision, Decision::Refused { .. }));
    assert_eq!(x.action.set_cookie, None);
}

#[test]
fn header_type_carries_the_token_in_headers() {
    let e = engine(r#"{"type": "header", "session_name": "X-Session"}"#);
    let store = FakeStore::default();
    let x = exchange(&e, &store, Req::default(), Resp::served_by(B), 0);
    let (name, token) = x.action.set_header.clone().unwrap();
    assert_eq!(name, "x-session");
    assert_eq!(x.action.set_cookie, None);
    let x = exchange(
        &e,
        &store,
        Req::default().with("x-session", &token),
        Resp::served_by(B),
        1,
    );
    assert_eq!(pinned_to(&x), Some(B));
    assert_eq!(x.edits.remove_header.as_deref(), Some("x-session"));
    assert_eq!(x.action.set_header, None);
}

#[test]
fn learn_from_application_cookie() {
    let e = engine(r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#);
    let store = FakeStore::default();
    // The application starts a session on B.
    let resp = Resp {
        set_cookies: vec![b"JSESSIONID=abc; Path=/".to_vec()],
        ..Resp::served_by(B)
    };
    let x = exchange(&e, &store, Req::default(), resp, 0);
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    let companion = cookie_pair(&x.action);
    assert!(
        companion.starts_with("tether-JSESSIONID="),
        "tether never issues the application's cookie: {companion}"
    );
    let x = exchange(
        &e,
        &store,
        cookie_req("JSESSIONID=abc"),
        Resp::served_by(B),
        1,
    );
    assert_eq!(pinned_to(&x), Some(B));
    let both = format!("JSESSIONID=abc; {companion}");
    let x = exchange(&e, &store, cookie_req(&both), Resp::served_by(B), 1);
    assert_eq!(
        x.edits.cookie.as_deref(),
        Some(&b"JSESSIONID=abc"[..]),
        "the companion stays with tether"
    );

    // Another replica (same keys, empty table) follows the companion, and learns the binding.
    let replica =
        engine(r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#);
    let other_store = FakeStore::default();
    let x = exchange(
        &replica,
        &other_store,
        cookie_req(&both),
        Resp::served_by(B),
        2,
    );
    assert_eq!(pinned_to(&x), Some(B));
    assert!(x.state.adopted);
    let x = exchange(
        &replica,
        &other_store,
        cookie_req("JSESSIONID=abc"),
        Resp::served_by(B),
        3,
    );
    assert_eq!(pinned_to(&x), Some(B), "adopted into this replica's table");
    // A companion does not open next to another id.
    let stolen = format!("JSESSIONID=zzz; {companion}");
    let x = exchange(
        &replica,
        &FakeStore::default(),
        cookie_req(&stolen),
        Resp::served_by(A),
        4,
    );
    assert_eq!(x.state.found, Found::New(Miss::Unknown));
    let x = exchange(
        &e,
        &store,
        cookie_req("JSESSIONID=abc"),
        Resp::served_by(B),
        5,
    );
    assert_eq!(
        x.edits.cookie, None,
        "the application's cookie reaches the application"
    );
    // Another id is not pinned; a request without one has nothing to bind.
    let x = exchange(
        &e,
        &store,
        cookie_req("JSESSIONID=zzz"),
        Resp::served_by(A),
        2,
    );
    assert_eq!(x.state.found, Found::New(Miss::Unknown));
    let x = exchange(&e, &store, Req::default(), Resp::served_by(A), 3);
    assert_eq!(x.action.decision, Decision::Unserved);
}

#[test]
fn learn_from_header_and_query_bind_on_first_sight() {
    let e = engine(r#"{"type": "learn", "learn_from": "header", "session_name": "x-session-id"}"#);
    let store = FakeStore::default();
    let req = Req::default().with("x-session-id", "conversation-42");
    let x = exchange(&e, &store, req.clone(), Resp::served_by(B), 0);
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    assert_eq!(
        pinned_to(&exchange(&e, &store, req, Resp::served_by(B), 1)),
        Some(B)
    );

    let e = engine(r#"{"type": "learn", "learn_from": "query", "session_name": "sid"}"#);
    let x = exchange(
        &e,
        &store,
        Req::default().with(":path", "/chat?x=1&sid=s-9"),
        Resp::served_by(A),
        0,
    );
    assert!(matches!(x.action.decision, Decision::Issued { .. }));
    let x = exchange(
        &e,
        &store,
        Req::default().with(":path", "/other?sid=s-9#frag"),
        Resp::served_by(A),
        1,
    );
    assert_eq!(pinned_to(&x), Some(A));
    let x = exchange(
        &e,
        &store,
        Req::default().with(":path", "/other?sid=s-10"),
        Resp::served_by(B),
        2,
    );
    assert_eq!(x.state.found, Found::New(Miss::Unknown));
}

#[test]
fn source_ip_with_and_without_trusted_hops() {
    let store = FakeStore::default();
    // Where a request lands: the endpoint it was pinned to, if any.
    let pinned = |e: &Engine, req: Req, served: &str, now: u64| {
        pinned_to(&exchange(e, &store, req, Resp::served_by(served), now)).map(str::to_string)
    };
    let e = engine(r#"{"type": "source_ip"}"#);
    let req = |peer: &str| Req {
        source: Some(peer.into()),
        ..Req::default()
    };
    pinned(&e, req("10.0.0.1:5555"), B, 0);
    assert_eq!(pinned(&e, req("10.0.0.1:6666"), B, 1).as_deref(), Some(B));
    assert_eq!(
        pinned(&e, req("[::ffff:10.0.0.1]:7"), B, 1).as_deref(),
        Some(B)
    );
    assert_eq!(pinned(&e, req("10.0.0.2:6666"), A, 2), None);

    // Envoy (use_remote_address: true) appended the peer: hop 0. Hop 1 is what the trusted
    // proxy saw.
    let e = engine(r#"{"type": "source_ip", "trusted_hops": 1}"#);
    let behind = |xff: &str| Req {
        source: Some("127.0.0.1:1".into()),
        ..Req::default().with("x-forwarded-for", xff)
    };
    pinned(&e, behind("1.1.1.1, 203.0.113.9, 127.0.0.1"), A, 0);
    assert_eq!(
        pinned(&e, behind("6.6.6.6, 203.0.113.9, 127.0.0.1"), A, 1).as_deref(),
        Some(A),
        "spoofed left entries do not matter"
    );
    assert_eq!(pinned(&e, behind("203.0.113.10, 127.0.0.1"), B, 2), None);
}

#[test]
fn client_ip_parsing() {
    let mut r = Req {
        source: Some("192.0.2.1:80".into()),
        ..Req::default().with("x-forwarded-for", "a, 198.51.100.7 ,2001:db8::1, 192.0.2.1")
    };
    assert_eq!(client_ip(&mut r, 0), "192.0.2.1".parse().ok());
    assert_eq!(client_ip(&mut r, 1), "2001:db8::1".parse().ok());
    assert_eq!(client_ip(&mut r, 2), "198.51.100.7".parse().ok());
    assert_eq!(
        client_ip(&mut r, 4),
        "192.0.2.1".parse().ok(),
        "malformed entry: the peer"
    );
    assert_eq!(
        client_ip(&mut r, 5),
        "192.0.2.1".parse().ok(),
        "too few entries: the peer"
    );
    let mut garbage = Req {
        source: Some("x".into()),
        ..Req::default().with("x-forwarded-for", "\u{ff}")
    };
    assert_eq!(client_ip(&mut garbage, 1), None);
}

#[test]
fn cluster_pins_travel_with_the_session() {
    let e = engine(r#"{"upstream": {"cluster_header": "x-tether-cluster"}}"#);
    let store = FakeStore::default();
    let resp = Resp {
        cluster: Some("app-canary".into()),
        ..Resp::served_by(B)
    };
    let pair = cookie_pair(&exchange(&e, &store, Req::default(), resp, 0).action);
    let x = exchange(&e, &store, cookie_req(&pair), Resp::served_by(B), 1);
    assert_eq!(x.edits.cluster.as_deref(), Some("app-canary"));
    assert_eq!(x.edits.host.as_deref(), Some(B));
}

#[test]
fn local_replies_record_nothing() {
    let e = engine(r#"{"type": "source_ip"}"#);
    let store = FakeStore::default();
    e.table.prepare(&store).unwrap();
    let writes = store.sets.get();
    let req = Req {
        source: Some("10.0.0.1:1".into()),
        ..Req::default()
    };
    let none = Resp {
        upstream: None,
        ..Resp::served_by(A)
    };
    assert_eq!(
        exchange(&e, &store, req.clone(), none, 0).action.decision,
        Decision::Unserved
    );
    // Envoy's reply after a failed try names the endpoint it tried: a 5xx that did not come
    // from it binds nothing.
    let local = Resp {
        status: Some(503),
        from_upstream: false,
        ..Resp::served_by(A)
    };
    assert_eq!(
        exchange(&e, &store, req.clone(), local, 0).action.decision,
        Decision::Unserved
    );
    assert_eq!(store.sets.get(), writes);
    // A 5xx the endpoint itself sent is its answer: the session is bound there.
    let app_error = Resp {
        status: Some(503),
        ..Resp::served_by(A)
    };
    assert!(matches!(
        exchange(&e, &store, req, app_error, 0).action.decision,
        Decision::Issued { .. }
    ));
}

/// Below 500 the status alone says the endpoint answered: `response.code_details`, a costlier
/// host call, is asked only for a 5xx, for new sessions as for returning ones.
#[test]
fn code_details_are_asked_only_for_5xx() {
    struct Counting(Resp, usize);
    impl Response for Counting {
        fn upstream(&mut self) -> Option<String> {
            self.0.upstream()
        }
        fn came_from_upstream(&mut self) -> bool {
            self.1 += 1;
            self.0.came_from_upstream()
        }
        fn cluster(&mut self) -> Option<String> {
            self.0.cluster()
        }
        fn set_cookies(&mut self) -> Vec<Vec<u8>> {
            self.0.set_cookies()
        }
        fn status(&mut self) -> Option<u16> {
            self.0.status()
        }
    }
    let e = engine(r#"{"type": "cookie"}"#);
    let store = FakeStore::default();
    for (status, asked) in [(200, 0), (404, 0), (499, 0), (500, 1), (503, 1)] {
        let mut req = Req::default();
        let (state, _) = e.on_request(&store, &mut req, 0);
        let mut resp = Counting(
            Resp {
                status: Some(status),
                ..Resp::served_by(A)
            },
            0,
        );
        let action = e.on_response(&store, &state, &mut resp, 0, &mut SystemEntropy);
        assert!(
            matches!(action.decision, Decision::Issued { .. }),
            "{status}"
        );
        assert_eq!(resp.1, asked, "status {status}");
    }
}

#[test]
fn table_write_failure_is_reported() {
    let e = engine(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = FakeStore::default();
    e.table.prepare(&store).unwrap();
    store.force_mismatches.set(usize::MAX);
    let x = exchange(
        &e,
        &store,
        Req::default().with("x-sid", "a"),
        Resp::served_by(A),
        0,
    );
    assert_eq!(
        x.action.decision,
        Decision::WriteFailed(WriteError::Contended)
    );
}

#[test]
fn no_entropy_no_token() {
    struct Broken;
    impl Entropy for Broken {
        fn fill(&mut self, _: &mut [u8]) -> bool {
            false
        }
    }
    let e = engine("{}");
    let store = FakeStore::default();
    let (state, _) = e.on_request(&store, &mut Req::default(), 0);
    let a = e.on_response(&store, &state, &mut Resp::served_by(A), 0, &mut Broken);
    assert_eq!(a.decision, Decision::NoEntropy);
    assert_eq!(a.set_cookie, None);
}

#[test]
fn the_pinned_endpoints_own_5xx_is_still_a_hit() {
    let e = engine("{}");
    let store = FakeStore::default();
    let pair = cookie_pair(&exchange(&e, &store, Req::default(), Resp::served_by(A), 0).action);
    let own = Resp {
        status: Some(503),
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, cookie_req(&pair), own, 1);
    assert!(
        matches!(x.action.decision, Decision::Hit { .. }),
        "{:?}",
        x.action.decision
    );
    // Below 500 the status alone says the endpoint answered: its own 404 is a hit too.
    let not_found = Resp {
        status: Some(404),
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, cookie_req(&pair), not_found, 2);
    assert!(matches!(x.action.decision, Decision::Hit { .. }));
}

#[test]
fn a_session_nothing_can_serve_is_let_go() {
    let e = engine("{}");
    let store = FakeStore::default();
    let pair = cookie_pair(&exchange(&e, &store, Req::default(), Resp::served_by(A), 0).action);
    // Every try failed: Envoy's own 503.
    let failed = Resp {
        status: Some(503),
        from_upstream: false,
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, cookie_req(&pair), failed, 1);
    assert!(matches!(x.action.decision, Decision::Dropped { .. }));
    assert!(x
        .action
        .set_cookie
        .as_deref()
        .unwrap()
        .contains("Max-Age=0"));
    // A local reply that is not a failure (a 404 from a direct response, say) keeps the pin.
    let local = Resp {
        status: Some(404),
        from_upstream: false,
        upstream: None,
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, cookie_req(&pair), local, 2);
    assert_eq!(x.action.decision, Decision::Unserved);

    let e = engine(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let req = Req::default().with("x-sid", "s1");
    exchange(&e, &store, req.clone(), Resp::served_by(A), 0);
    let failed = Resp {
        status: Some(503),
        from_upstream: false,
        ..Resp::served_by(A)
    };
    let x = exchange(&e, &store, req.clone(), failed, 1);
    assert!(matches!(x.action.decision, Decision::Dropped { .. }));
    let x = exchange(&e, &store, req, Resp::served_by(B), 2);
    assert_eq!(
        x.state.found,
        Found::New(Miss::Unknown),
        "the table forgot it"
    );
}

#[test]
fn a_flood_of_new_ids_does_not_evict_sessions_that_came_back() {
    // One bucket of 8 slots. The active session is used every 200 ms, each time followed by a
    // never-seen id: more new ids than slots within LRU_TOUCH_MS.
    let e = engine(
        r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid", "max_sessions": 8}"#,
    );
    let store = FakeStore::default();
    let active = || Req::default().with("x-sid", "active");
    let first = exchange(&e, &store, active(), Resp::served_by(A), 0);
    assert!(matches!(first.action.decision, Decision::Issued { .. }));
    let mut t = 0;
    for i in 0..(2 * crate::table::SLOTS_PER_BUCKET) {
        t += 200;
        let x = exchange(&e, &store, active(), Resp::served_by(A), t);
        assert!(
            matches!(x.action.decision, Decision::Hit { .. }),
            "round {i}: the active session lost its binding: {:?}",
            x.action.decision
        );
        let new = Req::default().with("x-sid", &format!("flood-{i}"));
        let x = exchange(&e, &store, new, Resp::served_by(B), t + 1);
        assert!(matches!(x.action.decision, Decision::Issued { .. }));
    }
}

#[test]
fn the_first_return_of_a_table_binding_is_written_back_at_once() {
    let e = engine(r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#);
    let store = FakeStore::default();
    let req = || Req::default().with("x-sid", "s1");
    exchange(&e, &store, req(), Resp::served_by(A), 1_000);
    let after_bind = store.sets.get();
    // Well within LRU_TOUCH_MS: the first return is recorded, the second is not.
    exchange(&e, &store, req(), Resp::served_by(A), 1_010);
    assert_eq!(store.sets.get(), after_bind + 1, "first return written");
    exchange(&e, &store, req(), Resp::served_by(A), 1_020);
    assert_eq!(
        store.sets.get(),
        after_bind + 1,
        "later returns wait for the interval"
    );
    // Cookie sessions store nothing, first return or not.
    let c = engine("{}");
    let s2 = FakeStore::default();
    let pair = cookie_pair(&exchange(&c, &s2, Req::default(), Resp::served_by(A), 0).action);
    let x = exchange(&c, &s2, cookie_req(&pair), Resp::served_by(A), 10);
    assert_eq!(
        x.action.set_cookie, None,
        "no token re-issued on a first return"
    );
    assert_eq!(s2.sets.get(), 0);
}
