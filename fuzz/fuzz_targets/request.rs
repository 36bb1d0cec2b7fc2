//! A whole request of client bytes through the engine, for every session type: the Cookie
//! header, the session header, a learned header, the path (query id) and X-Forwarded-For. No
//! panic; nothing pinned from an empty table or an unsealed token; every Set-Cookie and
//! response header tether writes is its own sealed token, never client bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::config::Config;
use tether::entropy::SystemEntropy;
use tether::http::HeaderOp;
use tether::plugin::Plugin;
use tether::policy::Found;
use tether::testing::{FakeRequest, FakeResponse, FakeStore};

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
    let mut req = FakeRequest::default().from_address(Some("127.0.0.1:40000"));
    for name in [
        "cookie",
        "cookie",
        "x-session",
        "x-sid",
        ":path",
        "x-forwarded-for",
    ] {
        req = req.header(name, parts.next().unwrap_or_default());
    }
    for json in CONFIGS {
        let Ok(config) = Config::parse(json.as_bytes()) else {
            return;
        };
        let plugin = Plugin::new(&config, &[7; 32]);
        let store = FakeStore::default();
        for table in plugin.tables() {
            let _ = table.prepare(&store);
        }
        let plan = plugin.on_request(None, &mut req.clone(), &store, 1_000);
        let Some(stream) = plan.stream else {
            panic!("{json}: no policy");
        };
        assert!(
            !matches!(stream.state.found(), Found::Pinned(_)),
            "{json}: pinned from client bytes"
        );
        assert!(
            !plan
                .ops
                .iter()
                .any(|op| matches!(op, HeaderOp::Set(n, _) if n == "x-tether-host")),
            "{json}: a routing header from client bytes"
        );
        let mut resp = FakeResponse::ok("127.0.0.1:8081").set_cookie("JSESSIONID=app.1; Path=/");
        let action = plugin.on_response(&stream, &mut resp, &store, 1_000, &mut SystemEntropy);
        for op in &action.ops {
            match op {
                HeaderOp::Add(name, v) if name == "set-cookie" => {
                    let set_cookie = String::from_utf8_lossy(v);
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
                HeaderOp::Set(_, value) => {
                    assert!(sealed(&String::from_utf8_lossy(value)), "{value:?}")
                }
                _ => {}
            }
        }
    }
});
