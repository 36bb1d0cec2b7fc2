//! X-Forwarded-For from a client: any bytes and any number of trusted hops; the address taken
//! is the peer's or one written in the header, never one made up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tether::session::{client_ip, Request};

struct Req<'a>(&'a [u8]);

impl Request for Req<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        (name == "x-forwarded-for").then(|| self.0.to_vec())
    }
    fn source_address(&mut self) -> Option<String> {
        Some("127.0.0.1:40000".into())
    }
}

fn parse(text: &[u8]) -> Option<IpAddr> {
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

fuzz_target!(|data: &[u8]| {
    let Some((&hops, xff)) = data.split_first() else {
        return;
    };
    let hops = usize::from(hops % 20);
    if let Some(ip) = client_ip(&mut Req(xff), hops) {
        let peer: IpAddr = [127, 0, 0, 1].into();
        let written = xff
            .split(|&b| b == b',')
            .filter_map(|e| parse(e.trim_ascii()))
            .any(|e| e == ip);
        assert!(ip == peer || written, "{ip} from nowhere");
    }
});
