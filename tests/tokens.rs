//! Issue #5, item 2: every way a client can bend a token it was given, tried against the real
//! sealer and the real decision engine (no Envoy): every single bit flipped, every truncation,
//! extensions, replay after expiry, a key that was removed, another route's token. All of them
//! must be "no session" (`Found::New`), and nothing a client sends may reach a `Set-Cookie`,
//! a response header or the routing header (CR/LF injection tried).
//!
//! The figures (how many variants each test tried) are printed with `--nocapture`.

// Native only (proptest, files); the wasm32 test build (`make unit-wasm`) runs the unit tests.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed expectation should stop the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use tether::config::{Config, Settings};
use tether::encoding::{base64url_decode, base64url_encode};
use tether::entropy::{Entropy, SystemEntropy};
use tether::http::HeaderOp;
use tether::plugin::{Plugin, Stream};
use tether::policy::{Found, Miss, PolicyState};
use tether::seal::MAX_TOKEN_LEN;
use tether::testing::{FakeRequest, FakeResponse, FakeStore};

const A: &str = "127.0.0.1:8081";
const B: &str = "127.0.0.1:8082";
const K1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const PROCESS_KEY: [u8; 32] = [9; 32];
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A request as these tests write it: header fields in order, and the peer address.
#[derive(Default, Clone)]
struct Req {
    headers: Vec<(String, Vec<u8>)>,
    source: Option<String>,
}

impl Req {
    fn with(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    fn fake(&self) -> FakeRequest {
        let mut req = FakeRequest::default().from_address(self.source.as_deref());
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        if !self.headers.iter().any(|(n, _)| n == ":path") {
            req = req.header(":path", "/");
        }
        req
    }
}

/// A response from `endpoint`, as Envoy reports it; `set_cookies` are the application's.
struct Resp {
    endpoint: String,
    set_cookies: Vec<Vec<u8>>,
}

impl Resp {
    fn from(endpoint: &str) -> Resp {
        Resp {
            endpoint: endpoint.into(),
            set_cookies: vec![],
        }
    }

    fn fake(&self) -> FakeResponse {
        let mut resp = FakeResponse::ok(&self.endpoint);
        for c in &self.set_cookies {
            resp = resp.header("set-cookie", c);
        }
        resp
    }
}

/// One policy's request and response paths, through the real plugin, seen as the headers tether
/// sets on the request and the token it hands out.
struct Engine {
    plugin: Plugin,
    settings: Settings,
}

struct RequestState {
    found: Found,
    adopted: bool,
    stream: Stream,
}

/// What the request phase set: the routing headers and the Cookie header the backend receives
/// (`Some(empty)`: removed).
struct Edits {
    host: Option<String>,
    cluster: Option<String>,
    cookie: Option<Vec<u8>>,
}

/// What the response phase handed the client: tether's Set-Cookie, its response header.
struct ResponseAction {
    set_cookie: Option<String>,
    set_header: Option<(String, String)>,
}

impl Engine {
    fn new(settings: Settings, process_key: [u8; 32]) -> Engine {
        let config = Config {
            default: settings.clone(),
            routes: Vec::new(),
        };
        Engine {
            plugin: Plugin::new(&config, &process_key),
            settings,
        }
    }

    fn on_request(&self, store: &FakeStore, req: &mut Req, now: u64) -> (RequestState, Edits) {
        let plan = self.plugin.on_request(None, &mut req.fake(), store, now);
        let set = |name: &str| {
            plan.ops.iter().rev().find_map(|op| match op {
                HeaderOp::Set(n, v) if *n == name => Some(Some(v.clone())),
                HeaderOp::Remove(n) if *n == name => Some(None),
                _ => None,
            })
        };
        let text = |v: Option<Option<Vec<u8>>>| {
            v.flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let edits = Edits {
            host: text(set("x-tether-host")),
            cluster: text(set("x-tether-cluster")),
            cookie: set("cookie").map(Option::unwrap_or_default),
        };
        let stream = plan.stream.expect("a policy");
        let adopted = matches!(&stream.state, PolicyState::Table(t) if t.adopted);
        let state = RequestState {
            found: stream.state.found().clone(),
            adopted,
            stream,
        };
        (state, edits)
    }

    fn on_response(
        &self,
        store: &FakeStore,
        state: &RequestState,
        resp: &mut Resp,
        now: u64,
        entropy: &mut dyn Entropy,
    ) -> ResponseAction {
        let action = self
            .plugin
            .on_response(&state.stream, &mut resp.fake(), store, now, entropy);
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        ResponseAction {
            set_cookie: action.ops.iter().rev().find_map(|op| match op {
                HeaderOp::Add(n, v) if *n == "set-cookie" => Some(text(v)),
                _ => None,
            }),
            set_header: action.ops.iter().rev().find_map(|op| match op {
                HeaderOp::Set(n, v) => Some((n.to_string(), text(v))),
                _ => None,
            }),
        }
    }
}

fn config(json: &str) -> Config {
    Config::parse(json.as_bytes()).expect("test config parses")
}

fn engine(json: &str) -> Engine {
    Engine::new(config(json).default, PROCESS_KEY)
}

/// The engine of route `name` in a configuration with `routes`.
fn route_engine(json: &str, name: &str) -> Engine {
    let settings = config(json)
        .routes
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, s)| s)
        .expect("route configured and enabled");
    Engine::new(settings, PROCESS_KEY)
}

fn exchange(
    e: &Engine,
    store: &FakeStore,
    mut req: Req,
    mut resp: Resp,
    now: u64,
) -> ResponseAction {
    let (state, _) = e.on_request(store, &mut req, now);
    e.on_response(store, &state, &mut resp, now, &mut SystemEntropy)
}

/// A new cookie session served by `endpoint` at `now`: the token the client got.
fn issue_cookie(e: &Engine, endpoint: &str, now: u64) -> String {
    let action = exchange(
        e,
        &FakeStore::default(),
        Req::default(),
        Resp::from(endpoint),
        now,
    );
    let set_cookie = action.set_cookie.expect("a new session gets a cookie");
    let pair = set_cookie.split(';').next().unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, e.settings.session_name);
    value.to_string()
}

fn endpoint(found: &Found) -> Option<&str> {
    match found {
        Found::Pinned(p) => Some(&*p.endpoint),
        _ => None,
    }
}

fn found_with_cookie(e: &Engine, name: &str, value: &[u8], now: u64) -> Found {
    let mut header = format!("{name}=").into_bytes();
    header.extend_from_slice(value);
    let (state, edits) = e.on_request(
        &FakeStore::default(),
        &mut Req::default().with("cookie", &header),
        now,
    );
    if matches!(state.found, Found::New(_)) {
        assert_eq!(edits.host, None, "no session, yet a routing header was set");
    }
    state.found
}

fn found_with_header(e: &Engine, name: &str, value: &[u8], now: u64) -> Found {
    let (state, _) = e.on_request(
        &FakeStore::default(),
        &mut Req::default().with(name, value),
        now,
    );
    state.found
}

/// Every single-bit flip of the token's bytes, every single-character replacement of its text
/// (all 255 other byte values), every truncation (bytes and text), and extensions. In a
/// cookie, a `;` after the value ends it (`tether=<token>;` is the token): not an extension.
fn variants(token: &str, in_cookie: bool) -> Vec<(String, Vec<u8>)> {
    let raw = base64url_decode(token.as_bytes()).expect("own token decodes");
    let mut out = Vec::new();
    for bit in 0..raw.len() * 8 {
        let mut bad = raw.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        out.push((
            format!("bit {bit} flipped"),
            base64url_encode(&bad).into_bytes(),
        ));
    }
    let text = token.as_bytes();
    for at in 0..text.len() {
        for byte in 0..=255u8 {
            if byte != text[at] {
                let mut bad = text.to_vec();
                bad[at] = byte;
                out.push((format!("char {at} -> {byte:#04x}"), bad));
            }
        }
    }
    for cut in 0..raw.len() {
        out.push((
            format!("{cut} bytes kept"),
            base64url_encode(&raw[..cut]).into_bytes(),
        ));
    }
    for cut in 0..text.len() {
        out.push((format!("{cut} chars kept"), text[..cut].to_vec()));
    }
    for extra in [&[0u8][..], &[0xff], &[0; 16], &raw] {
        let mut longer = raw.clone();
        longer.extend_from_slice(extra);
        out.push((
            format!("{} bytes appended", extra.len()),
            base64url_encode(&longer).into_bytes(),
        ));
    }
    // Spaces and tabs around a value are not part of it (HTTP strips them around a header
    // value, and so does the cookie parser): not an alteration, left out.
    for &c in BASE64URL.iter().chain(b"=+/.,;\"") {
        if !(in_cookie && c == b';') {
            let mut longer = text.to_vec();
            longer.push(c);
            out.push((format!("{:?} appended", char::from(c)), longer));
        }
        let mut before = vec![c];
        before.extend_from_slice(text);
        out.push((format!("{:?} prepended", char::from(c)), before));
    }
    out.push(("token twice".into(), [text, text].concat()));
    let mut padded = text.to_vec();
    padded.resize(MAX_TOKEN_LEN + 1, b'A');
    out.push(("padded past the limit".into(), padded));
    out.retain(|(_, v)| v.as_slice() != text);
    out
}

/// Writes tests/e2e/reliability-results/<key>.json, a row of RELIABILITY.md's table
/// (tests/e2e/reliability.py renders it). Called only once a test's assertions have passed.
fn record(key: &str, tried: &str, figures: &str) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/reliability-results");
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entry = serde_json::json!({
        "key": key, "item": "2", "tried": tried, "figures": figures, "ok": true,
        "run": "make test (cargo test)", "unix": unix, "seconds": null, "data": {},
    });
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("{key}.json.tmp"));
    std::fs::write(&tmp, format!("{entry:#}\n")).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{key}.json"))).unwrap();
}

/// "N variants (bit flips, character replacements, truncations, extensions)".
fn breakdown(all: &[(String, Vec<u8>)]) -> String {
    let count = |f: &dyn Fn(&str) -> bool| all.iter().filter(|(l, _)| f(l)).count();
    let bits = count(&|l| l.starts_with("bit "));
    let chars = count(&|l| l.starts_with("char "));
    let cuts = count(&|l| l.ends_with(" kept"));
    format!(
        "{} variants: {bits} single-bit flips, {chars} single-character replacements (every byte value), {cuts} truncations, {} extensions",
        all.len(),
        all.len() - bits - chars - cuts
    )
}

#[test]
fn every_altered_cookie_token_is_no_session() {
    let e = engine(&format!(r#"{{"keys": ["{K1}"], "idle_timeout": "30m"}}"#));
    let token = issue_cookie(&e, A, 1_000);
    assert_eq!(
        endpoint(&found_with_cookie(&e, "tether", token.as_bytes(), 2_000)),
        Some(A)
    );
    let all = variants(&token, true);
    let mut accepted = Vec::new();
    for (label, value) in &all {
        if let Found::Pinned(p) = found_with_cookie(&e, "tether", value, 2_000) {
            accepted.push((label.clone(), p.endpoint));
        }
    }
    println!(
        "cookie token of {} chars: {} altered variants tried, {} opened",
        token.len(),
        all.len(),
        accepted.len()
    );
    assert!(accepted.is_empty(), "altered tokens opened: {accepted:?}");
    // The genuine token still works after all that.
    assert_eq!(
        endpoint(&found_with_cookie(&e, "tether", token.as_bytes(), 2_000)),
        Some(A)
    );
    record(
        "tokens-altered-cookie",
        &format!(
            "a real cookie token ({} chars) altered every way, sent to the real engine",
            token.len()
        ),
        &format!("{}; opened: 0", breakdown(&all)),
    );
}

#[test]
fn every_altered_header_token_is_no_session() {
    let e = engine(&format!(
        r#"{{"type": "header", "session_name": "x-session", "keys": ["{K1}"]}}"#
    ));
    let action = exchange(
        &e,
        &FakeStore::default(),
        Req::default(),
        Resp::from(B),
        1_000,
    );
    let (name, token) = action
        .set_header
        .expect("a new header session gets its token");
    assert_eq!(
        endpoint(&found_with_header(&e, &name, token.as_bytes(), 2_000)),
        Some(B)
    );
    let all = variants(&token, false);
    let opened: Vec<_> = all
        .iter()
        .filter(|(_, v)| matches!(found_with_header(&e, &name, v, 2_000), Found::Pinned(_)))
        .map(|(l, _)| l.clone())
        .collect();
    println!(
        "header token: {} altered variants tried, {} opened",
        all.len(),
        opened.len()
    );
    assert!(
        opened.is_empty(),
        "altered header tokens opened: {opened:?}"
    );
    record(
        "tokens-altered-header",
        "a real `type: header` token altered every way",
        &format!("{}; opened: 0", breakdown(&all)),
    );
}

#[test]
fn every_altered_companion_token_is_no_session() {
    // learn_from: cookie hands out a companion token bound to the application's id; an Envoy
    // whose table does not know the id (another replica, or after a restart) follows it.
    let json = format!(
        r#"{{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID", "keys": ["{K1}"]}}"#
    );
    let e = engine(&json);
    let resp = Resp {
        endpoint: A.into(),
        set_cookies: vec![b"JSESSIONID=app-id-1; Path=/".to_vec()],
    };
    let action = exchange(&e, &FakeStore::default(), Req::default(), resp, 1_000);
    let set_cookie = action.set_cookie.expect("companion cookie");
    let (name, token) = set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap();
    assert_eq!(name, "tether-JSESSIONID");
    let with = |app_id: &[u8], value: &[u8]| {
        let mut header = b"JSESSIONID=".to_vec();
        header.extend_from_slice(app_id);
        header.extend_from_slice(format!("; {name}=").as_bytes());
        header.extend_from_slice(value);
        // An empty table: only the companion can pin.
        e.on_request(
            &FakeStore::default(),
            &mut Req::default().with("cookie", &header),
            2_000,
        )
        .0
    };
    let adopted = |s: RequestState| s.adopted && matches!(s.found, Found::Pinned(_));
    assert!(
        adopted(with(b"app-id-1", token.as_bytes())),
        "the genuine companion opens"
    );
    assert!(
        !adopted(with(b"app-id-2", token.as_bytes())),
        "a companion opens only next to its id"
    );
    let all = variants(token, true);
    let opened: Vec<_> = all
        .iter()
        .filter(|(_, v)| adopted(with(b"app-id-1", v)))
        .map(|(l, _)| l.clone())
        .collect();
    println!(
        "companion token: {} altered variants tried, {} opened",
        all.len(),
        opened.len()
    );
    assert!(
        opened.is_empty(),
        "altered companion tokens opened: {opened:?}"
    );
    record(
        "tokens-altered-companion",
        "a real companion token (`learn_from: cookie`, read by an Envoy whose table lacks the id) altered every way; the genuine one next to another application id",
        &format!("{}; opened: 0; next to another id: not opened", breakdown(&all)),
    );
}

const IDLE_MS: u64 = 10 * 60 * 1000;
const ABSOLUTE_MS: u64 = 60 * 60 * 1000;
const T0: u64 = 1_700_000_000_000;

#[test]
fn replay_after_expiry_is_no_session() {
    let e = engine(&format!(
        r#"{{"keys": ["{K1}"], "idle_timeout": "10m", "absolute_timeout": "1h"}}"#
    ));
    let first = issue_cookie(&e, A, T0);
    let at = |token: &str, now: u64| found_with_cookie(&e, "tether", token.as_bytes(), now);
    assert_eq!(
        endpoint(&at(&first, T0 + IDLE_MS - 1)),
        Some(A),
        "live until the idle limit"
    );
    for late in [
        IDLE_MS,
        IDLE_MS + 1,
        ABSOLUTE_MS,
        365 * 24 * 3_600_000,
        u64::MAX - T0,
    ] {
        assert_eq!(
            at(&first, T0 + late),
            Found::New(Miss::Expired),
            "replayed {late} ms later"
        );
    }
    // A session kept alive by its refreshes: every token it was given stays bound to its own
    // last-seen time (an old copy replayed later is expired), and the newest one ends at the
    // absolute timeout whatever the refreshes.
    let mut issued = vec![(T0, first.clone())];
    let mut now = T0;
    let step = IDLE_MS / 4;
    while now + step < T0 + ABSOLUTE_MS {
        now += step;
        let current = issued.last().unwrap().1.clone();
        let mut req = Req::default().with("cookie", format!("tether={current}"));
        let (state, _) = e.on_request(&FakeStore::default(), &mut req, now);
        assert_eq!(
            endpoint(&state.found),
            Some(A),
            "kept alive at +{} ms",
            now - T0
        );
        let action = e.on_response(
            &FakeStore::default(),
            &state,
            &mut Resp::from(A),
            now,
            &mut SystemEntropy,
        );
        if let Some(set_cookie) = action.set_cookie {
            let pair = set_cookie.split(';').next().unwrap();
            issued.push((now, pair.split_once('=').unwrap().1.to_string()));
        }
    }
    assert!(
        issued.len() >= 20,
        "refreshed {} times in an hour",
        issued.len() - 1
    );
    let newest = &issued.last().unwrap().1;
    assert_eq!(at(newest, T0 + ABSOLUTE_MS - 1).clone(), at(newest, now));
    assert_eq!(
        at(newest, T0 + ABSOLUTE_MS),
        Found::New(Miss::Expired),
        "absolute timeout"
    );
    let mut replays = 0;
    for (seen, token) in &issued[..issued.len() - 1] {
        let replay_at = seen + IDLE_MS;
        if replay_at < T0 + ABSOLUTE_MS {
            assert_eq!(
                at(token, replay_at),
                Found::New(Miss::Expired),
                "old token of {seen} replayed"
            );
            replays += 1;
        }
    }
    println!(
        "{} tokens of one session, {replays} replayed after their idle time: all expired",
        issued.len()
    );
    record(
        "tokens-expired-replay",
        "a token replayed after its idle timeout (at +10 min, +1 h, +1 year, the end of time); one session kept alive for an hour by its refreshes, each token it was given replayed after its own idle time",
        &format!("{} tokens of one session, {replays} replayed late: all expired; the newest expired at the absolute timeout", issued.len()),
    );
}

#[test]
fn token_sealed_with_a_removed_key_is_no_session() {
    let old = engine(&format!(r#"{{"keys": ["{K1}"]}}"#));
    let rotating = engine(&format!(r#"{{"keys": ["{K2}", "{K1}"]}}"#));
    let removed = engine(&format!(r#"{{"keys": ["{K2}"]}}"#));
    let t_old = issue_cookie(&old, A, T0);
    let open = |e: &Engine, token: &str| found_with_cookie(e, "tether", token.as_bytes(), T0 + 1);
    assert_eq!(
        endpoint(&open(&rotating, &t_old)),
        Some(A),
        "old tokens open during a rotation"
    );
    assert_eq!(
        open(&removed, &t_old),
        Found::New(Miss::Unknown),
        "the key was removed"
    );
    let t_new = issue_cookie(&rotating, B, T0);
    assert_eq!(
        endpoint(&open(&removed, &t_new)),
        Some(B),
        "the first key seals"
    );
    assert_eq!(
        open(&old, &t_new),
        Found::New(Miss::Unknown),
        "a key the Envoy never had"
    );
    // Without `keys`: each Envoy process seals with its own random key (a restart is a new one).
    let process = |key: u8| Engine::new(config("{}").default, [key; 32]);
    let t_process = issue_cookie(&process(3), A, T0);
    assert_eq!(endpoint(&open(&process(3), &t_process)), Some(A));
    assert_eq!(
        open(&process(4), &t_process),
        Found::New(Miss::Unknown),
        "another process"
    );
    assert_eq!(
        open(&old, &t_process),
        Found::New(Miss::Unknown),
        "configured keys do not open it"
    );
    record(
        "tokens-removed-key",
        "keys [K1] issue; [K2, K1] (rotation) and [K2] (K1 removed) open; a process key (no `keys`) from another process",
        "rotation: old token opens; K1 removed: no session; token of another process: no session",
    );
}

#[test]
fn token_issued_for_another_route_is_no_session() {
    let json = format!(
        r#"{{"keys": ["{K1}"], "routes": {{
            "cart": {{"session_name": "cart"}},
            "admin": {{"keys": ["{K2}"]}},
            "hdr": {{"type": "header", "session_name": "tether"}},
            "api": {{"idle_timeout": "1m"}}}}}}"#
    );
    let default = Engine::new(config(&json).default, PROCESS_KEY);
    let cart = route_engine(&json, "cart");
    let admin = route_engine(&json, "admin");
    let hdr = route_engine(&json, "hdr");
    let api = route_engine(&json, "api");
    let t_default = issue_cookie(&default, A, T0);
    let t_cart = issue_cookie(&cart, A, T0);
    let t_admin = issue_cookie(&admin, A, T0);
    let t_hdr = exchange(
        &hdr,
        &FakeStore::default(),
        Req::default(),
        Resp::from(A),
        T0,
    )
    .set_header
    .expect("header token")
    .1;
    let open =
        |e: &Engine, name: &str, token: &str| found_with_cookie(e, name, token.as_bytes(), T0 + 1);
    // Each token opens where it was issued.
    assert_eq!(endpoint(&open(&cart, "cart", &t_cart)), Some(A));
    assert_eq!(endpoint(&open(&admin, "tether", &t_admin)), Some(A));
    assert_eq!(
        endpoint(&found_with_header(&hdr, "tether", t_hdr.as_bytes(), T0 + 1)),
        Some(A)
    );
    // Another route's session name is another scope: its token does not open here, under
    // either cookie name.
    assert_eq!(open(&default, "tether", &t_cart), Found::New(Miss::Unknown));
    assert_eq!(open(&default, "cart", &t_cart), Found::New(Miss::NoToken));
    assert_eq!(open(&cart, "cart", &t_default), Found::New(Miss::Unknown));
    // Same name, another route's keys.
    assert_eq!(
        open(&default, "tether", &t_admin),
        Found::New(Miss::Unknown)
    );
    assert_eq!(
        open(&admin, "tether", &t_default),
        Found::New(Miss::Unknown)
    );
    // A header session's token is bound to its carrier: in the cookie of a cookie session of
    // the same name and keys it does not open (issue #12), nor anywhere else.
    assert_eq!(open(&default, "tether", &t_hdr), Found::New(Miss::Unknown));
    assert_eq!(open(&cart, "cart", &t_hdr), Found::New(Miss::Unknown));
    assert_eq!(open(&admin, "tether", &t_hdr), Found::New(Miss::Unknown));
    // By design, routes that keep the same session name and keys share their sessions (a
    // browser sends the one cookie to both): a route only overriding a timeout opens the
    // default route's token, under its own timeout.
    assert_eq!(endpoint(&open(&api, "tether", &t_default)), Some(A));
    assert_eq!(
        found_with_cookie(&api, "tether", t_default.as_bytes(), T0 + 60_000),
        Found::New(Miss::Expired)
    );
    record(
        "tokens-other-route",
        "tokens of routes with another session name (cookie `cart`), other keys, another type (header) sent to each other; a route that only overrides a timeout",
        "other name, other keys, other type (a header token in the cookie of the same name and keys): no session; same name and keys: shared by design (the browser sends one cookie to both), under the route's own timeout",
    );
}

/// What a client can put where tether reads: CR/LF (header splitting), lone CR and LF, NUL,
/// an obs-fold, a second Set-Cookie, a routing header, percent-encoded CR/LF, non-UTF-8.
const INJECTIONS: &[&[u8]] = &[
    b"x\r\nSet-Cookie: evil=1",
    b"x\r\nx-tether-host: 127.0.0.1:1",
    b"x\r\n\r\nHTTP/1.1 200 OK\r\n",
    b"x\rSet-Cookie: evil=1",
    b"x\nSet-Cookie: evil=1",
    b"x\0evil",
    b"x\r\n evil-fold",
    b"x%0d%0aSet-Cookie:%20evil=1",
    b"\xff\xfe\r\n\x80",
    b"x; Domain=evil.example; Path=/; Max-Age=999999",
    b"x\", evil=\"1",
];

/// A Set-Cookie tether wrote: `name=<base64url token>` and the configured attributes only.
fn check_set_cookie(value: &str, name: &str) -> Result<(), String> {
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("control byte in Set-Cookie {value:?}"));
    }
    let mut parts = value.split("; ");
    let (n, token) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .ok_or(format!("no pair in {value:?}"))?;
    if n != name {
        return Err(format!("cookie name {n:?}, expected {name:?}"));
    }
    // An empty value only on the cookie that clears a dropped session.
    if !token.bytes().all(|b| BASE64URL.contains(&b)) || (!token.is_empty() && token.len() < 40) {
        return Err(format!("cookie value {token:?} is not a sealed token"));
    }
    for attr in parts {
        let ok = matches!(
            attr,
            "HttpOnly" | "Secure" | "SameSite=Lax" | "SameSite=Strict" | "SameSite=None" | "Path=/"
        ) || attr
            .strip_prefix("Max-Age=")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(format!("attribute {attr:?} in {value:?}"));
        }
    }
    Ok(())
}

/// Sends `client` bytes in every place each session type reads, and checks that nothing of
/// them comes out in a Set-Cookie, a response header or a routing header.
fn injection_round(client: &[u8]) -> Result<usize, String> {
    let configs = [
        (format!(r#"{{"keys": ["{K1}"]}}"#), Some("tether"), None),
        (
            format!(r#"{{"type": "header", "session_name": "x-session", "keys": ["{K1}"]}}"#),
            None,
            Some("x-session"),
        ),
        (
            r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#.to_string(),
            None,
            None,
        ),
        (
            r#"{"type": "learn", "learn_from": "query", "session_name": "sid"}"#.to_string(),
            None,
            None,
        ),
        (
            r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#
                .to_string(),
            Some("tether-JSESSIONID"),
            None,
        ),
        (
            r#"{"type": "source_ip", "trusted_hops": 1}"#.to_string(),
            None,
            None,
        ),
    ];
    let mut checked = 0;
    for (json, cookie_name, header_name) in &configs {
        let e = engine(json);
        let store = FakeStore::default();
        let mut cookie = b"a=1; tether=".to_vec();
        cookie.extend_from_slice(client);
        cookie.extend_from_slice(b"; JSESSIONID=");
        cookie.extend_from_slice(client);
        cookie.extend_from_slice(b"; tether-JSESSIONID=");
        cookie.extend_from_slice(client);
        let mut path = b"/p?sid=".to_vec();
        path.extend_from_slice(client);
        let mut xff = client.to_vec();
        xff.extend_from_slice(b", 127.0.0.1");
        let req = Req {
            source: Some("127.0.0.1:40000".into()),
            ..Req::default()
        }
        .with("cookie", &cookie)
        .with("x-session", client)
        .with("x-sid", client)
        .with(":path", &path)
        .with("x-forwarded-for", &xff)
        .with("x-tether-host", client);
        // Twice: the second request finds what the first one bound (learn, source_ip).
        for round in 0..2 {
            let (state, edits) = e.on_request(&store, &mut req.clone(), T0 + round);
            if edits.host.as_deref().is_some_and(|h| h != A) || edits.cluster.is_some() {
                return Err(format!(
                    "{json}: routing header {:?} / {:?}",
                    edits.host, edits.cluster
                ));
            }
            if edits.host.is_some() && round == 0 {
                return Err(format!("{json}: a client's bytes pinned a session"));
            }
            if let Some(c) = &edits.cookie {
                if c.iter()
                    .any(|&b| (b == b'\r' || b == b'\n') && !client.contains(&b))
                {
                    return Err(format!("{json}: CR/LF made up in the Cookie header {c:?}"));
                }
            }
            let mut resp = Resp::from(A);
            if cookie_name == &Some("tether-JSESSIONID") {
                resp.set_cookies = vec![b"JSESSIONID=server-id.1; Path=/".to_vec()];
            }
            let action = e.on_response(&store, &state, &mut resp, T0 + round, &mut SystemEntropy);
            match (&action.set_cookie, cookie_name) {
                (Some(v), Some(name)) => {
                    check_set_cookie(v, name).map_err(|m| format!("{json}: {m}"))?
                }
                (Some(v), None) => return Err(format!("{json}: unexpected Set-Cookie {v:?}")),
                (None, _) => {}
            }
            match (&action.set_header, header_name) {
                (Some((n, v)), Some(name))
                    if n == name && v.len() >= 40 && v.bytes().all(|b| BASE64URL.contains(&b)) => {}
                (Some(h), _) => return Err(format!("{json}: response header {h:?}")),
                (None, _) => {}
            }
            if client.len() >= 8 {
                let text = String::from_utf8_lossy(client);
                let leaked = action
                    .set_cookie
                    .iter()
                    .chain(action.set_header.iter().map(|(_, v)| v))
                    .any(|v| v.contains(text.as_ref()));
                if leaked {
                    return Err(format!("{json}: client bytes {text:?} echoed"));
                }
            }
            checked += 1;
        }
    }
    Ok(checked)
}

#[test]
fn no_client_bytes_reach_a_set_cookie_or_a_header() {
    let mut checked = 0;
    for payload in INJECTIONS {
        checked += injection_round(payload).unwrap();
    }
    println!(
        "{} injection payloads x 6 session types x 2 requests: {checked} responses checked",
        INJECTIONS.len()
    );
    record(
        "tokens-injection",
        "CR/LF, lone CR, lone LF, NUL, obs-fold, a second Set-Cookie, a routing header, %0d%0a, `; Domain=`, quotes and non-UTF-8 in the cookie, session header, learned header, query id, application cookie, companion cookie and X-Forwarded-For, for all 6 session kinds (plus 256 generated cases)",
        &format!("{checked} responses checked: every Set-Cookie is `name=<sealed token>` with the configured attributes, every response header a sealed token, no routing header from client bytes"),
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes_never_reach_a_set_cookie_or_a_header(
        client in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (proptest::collection::vec(any::<u8>(), 0..40), prop::sample::select(INJECTIONS.to_vec()))
                .prop_map(|(mut v, inj)| { v.extend_from_slice(inj); v }),
        ]
    ) {
        if let Err(problem) = injection_round(&client) {
            prop_assert!(false, "{}", problem);
        }
    }
}

#[test]
fn the_set_cookie_check_refuses_what_it_must() {
    let token = "A".repeat(64);
    assert!(check_set_cookie(
        &format!("tether={token}; Path=/; HttpOnly; SameSite=Lax"),
        "tether"
    )
    .is_ok());
    for bad in [
        format!("tether={token}\r\nSet-Cookie: evil=1"),
        format!("tether={token}; Domain=evil.example"),
        format!("tether={token}x\u{7f}"),
        "tether=short".to_string(),
        format!("other={token}"),
        format!("tether={token}; Path=/evil"),
    ] {
        assert!(
            check_set_cookie(&bad, "tether").is_err(),
            "{bad:?} passed the check"
        );
    }
}
