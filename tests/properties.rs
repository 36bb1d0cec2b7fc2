//! Property-based tests: arbitrary bytes reach every parser that reads what a client sends
//! (tokens, cookies, X-Forwarded-For, query strings, plugin configuration). None may panic
//! (a panic kills the filter's VM), and none may yield a session tether did not issue.

// proptest is native only; the wasm32 test build (`make unit-wasm`) runs the unit tests.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed expectation should stop the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};
use tether::config::Config;
use tether::cookies;
use tether::encoding::{base64_decode, base64url_decode, base64url_encode};
use tether::entropy::SystemEntropy;
use tether::pin::Pin;
use tether::plugin::Plugin;
use tether::policy::{client_ip, Found};
use tether::seal::{Carrier, Sealer};
use tether::testing::{FakeRequest, FakeStore};

fn parse_any(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

fn plugin(json: &str) -> Plugin {
    Plugin::new(&Config::parse(json.as_bytes()).expect("config"), &[3; 32])
}

fn found(p: &Plugin, req: &mut FakeRequest) -> Found {
    let plan = p.on_request(None, req, &FakeStore::default(), 10);
    plan.stream.expect("a policy").state.found().clone()
}

fn pin() -> Pin {
    Pin {
        endpoint: "127.0.0.1:8081".into(),
        cluster: None,
        created_ms: 1,
        last_seen_ms: 2,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn tokens_from_arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let sealer = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        prop_assert_eq!(sealer.open(&bytes, b""), None);
        let _ = base64_decode(&bytes);
    }

    #[test]
    fn any_mutation_of_a_token_is_refused(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let sealer = Sealer::new(&[[1; 32]], Carrier::Cookie, "tether");
        let token = sealer.seal(&pin(), b"", &mut SystemEntropy).expect("seal");
        let mut raw = base64url_decode(token.as_bytes()).expect("own token decodes");
        let original = raw.clone();
        for (at, byte) in edits {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        prop_assume!(raw != original);
        prop_assert_eq!(sealer.open(base64url_encode(&raw).as_bytes(), b""), None);
    }

    #[test]
    fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert_eq!(base64url_decode(base64url_encode(&bytes).as_bytes()), Some(bytes));
    }

    #[test]
    fn cookie_parsing_takes_any_bytes(
        header in proptest::collection::vec(any::<u8>(), 0..2000),
        second in proptest::collection::vec(any::<u8>(), 0..200),
        name in "[a-zA-Z0-9_-]{1,12}",
    ) {
        let fields = [header.as_slice(), second.as_slice()];
        let values = cookies::values(fields, &name);
        prop_assert!(values.len() <= cookies::MAX_CANDIDATES);
        if let Some(rest) = cookies::without(fields, &[&name]) {
            prop_assert!(cookies::values([rest.as_slice()], &name).is_empty(), "our cookie left in {:?}", rest);
        }
        let (found, rest) = cookies::take(&fields, &name);
        prop_assert_eq!(found, cookies::values(fields, &name));
        prop_assert_eq!(rest, cookies::without(fields, &[&name]));
        let _ = cookies::set_cookie_value(&header, &name, 1_000);
        let _ = cookies::cookie_date_ms(&header);
        let _ = cookies::path_matches(&header, "/app");
    }

    #[test]
    fn forwarded_for_takes_any_bytes(xff in proptest::collection::vec(any::<u8>(), 0..300), hops in 0usize..20, peer in "[0-9.:a-f\\[\\]]{0,30}") {
        let mut req = FakeRequest::new().header("x-forwarded-for", &xff).from_address(Some(&peer));
        if let Some(ip) = client_ip(&mut req, hops) {
            // Whatever comes out was written in the header or is the peer's: never made up.
            let candidates: Vec<IpAddr> = xff
                .split(|&b| b == b',')
                .filter_map(|e| parse_any(e.trim_ascii()))
                .chain(parse_any(peer.as_bytes()))
                .collect();
            prop_assert!(candidates.contains(&ip), "{} from nowhere", ip);
        }
    }

    #[test]
    fn configuration_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Config::parse(&bytes);
    }

    #[test]
    fn configuration_takes_any_json_values(
        field in prop::sample::select(vec!["type", "session_name", "learn_from", "trusted_hops", "keys",
            "on_unavailable", "unavailable_status", "retry_after", "max_sessions", "absolute_timeout",
            "idle_timeout", "cookie", "upstream", "routes"]),
        value in prop_oneof![
            Just("null".to_string()), any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() { f.to_string() } else { "0".into() }),
            "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            Just("{}".to_string()), Just("[]".to_string()), Just("{\"x\":{\"disabled\":true}}".to_string()),
        ],
    ) {
        let json = format!("{{\"{field}\": {value}}}");
        let _ = Config::parse(json.as_bytes());
    }

    #[test]
    fn no_cookie_header_yields_a_session_it_was_not_given(header in proptest::collection::vec(any::<u8>(), 0..1000)) {
        let p = plugin("{}");
        prop_assert!(matches!(found(&p, &mut FakeRequest::new().cookie(&header).cookie(&header)), Found::New(_)));
    }

    #[test]
    fn learned_ids_and_queries_take_any_bytes(value in proptest::collection::vec(any::<u8>(), 0..700)) {
        for json in [
            r#"{"type": "learn", "learn_from": "header", "session_name": "x-sid"}"#,
            r#"{"type": "learn", "learn_from": "query", "session_name": "sid"}"#,
            r#"{"type": "learn", "learn_from": "cookie", "session_name": "JSESSIONID"}"#,
        ] {
            let p = plugin(json);
            let mut req = FakeRequest::default();
            for name in ["x-sid", ":path", "cookie"] {
                req = req.header(name, &value);
            }
            // An empty table pins nothing, whatever the id.
            prop_assert!(!matches!(found(&p, &mut req), Found::Pinned(_)));
        }
    }
}
