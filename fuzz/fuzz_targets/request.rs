//! A whole request of client bytes through the engine, for every session type: the Cookie
//! header, the session header, a learned header, the path (query id) and X-Forwarded-For. No
//! panic; nothing pinned from an empty table or an unsealed token; every Set-Cookie and
//! response header tether writes is its own sealed token, never client bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use tether::config::PluginConfig;
use tether::session::{Engine, Found, Request, Response};
use tether::table::fake::FakeStore;
use tether::token::SystemEntropy;

struct Req(HashMap<&'static str, Vec<u8>>);

impl Request for Req {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.0.get(name).cloned()
    }
    fn source_address(&mut self) -> Option<String> {
        Some("127.0.0.1:40000".into())
    }
}

struct Resp;

impl Response for Resp {
    fn upstream(&mut self) -> Option<String> {
        Some("127.0.0.1:8081".into())
    }
    fn came_from_upstream(&mut self) -> bool {
        true
    }
    fn cluster(&mut self) -> Option<String> {
        Some("app".into())
    }
    fn set_cookies(&mut self) -> Vec<Vec<u8>> {
        vec![b"JSESSIONID=app.1; Path=/".to_vec()]
    }
    fn status(&mut self) -> Option<u16> {
        Some(200)
    }
}

const CONFIGS: [&str; 6] = [
    r#"{"keys": ["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]}"#,
    r#"{"type": "header", "session_name": "x-session"}"#,
    r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#,
    r#"{"type": "learn", "learn_from": "query", "session_name": "sid"}"#,
    r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#,
    r#"{"type": "source_ip", "trusted_hops": 1}"#,
];

fn sealed(value: &str) -> bool {
    value.len() >= 40
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0);
    let mut next = || parts.next().unwrap_or_default().to_vec();
    let mut headers = HashMap::new();
    for name in ["cookie", "x-session", "x-sid", ":path", "x-forwarded-for"] {
        headers.insert(name, next());
    }
    for json in CONFIGS {
        let Ok(config) = PluginConfig::parse(json.as_bytes()) else {
            return;
        };
        let engine = Engine::new(config.default, [7; 32]);
        let store = FakeStore::default();
        let (state, edits) = engine.on_request(&store, &mut Req(headers.clone()), 1_000);
        assert!(
            matches!(state.found, Found::New(_)),
            "{json}: pinned from client bytes"
        );
        assert_eq!(edits.host, None);
        let action = engine.on_response(&store, &state, &mut Resp, 1_000, &mut SystemEntropy);
        if let Some(set_cookie) = &action.set_cookie {
            assert!(
                !set_cookie.bytes().any(|b| b < 0x20 || b == 0x7f),
                "{set_cookie:?}"
            );
            let value = set_cookie
                .split(';')
                .next()
                .and_then(|p| p.split_once('='))
                .map(|(_, v)| v);
            assert!(value.is_some_and(sealed), "{set_cookie:?}");
        }
        if let Some((_, value)) = &action.set_header {
            assert!(sealed(value), "{value:?}");
        }
    }
});
