//! X-Forwarded-For from a client: any bytes and any number of trusted hops; the address taken
//! is the peer's or one written in the header, never one made up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tether::policy::client_ip;
use tether::testing::FakeRequest;

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
    let mut req = FakeRequest::new().header("x-forwarded-for", xff);
    if let Some(ip) = client_ip(&mut req, hops) {
        let peer: IpAddr = [127, 0, 0, 1].into();
        let written = xff
            .split(|&b| b == b',')
            .filter_map(|e| parse(e.trim_ascii()))
            .any(|e| e == ip);
        assert!(ip == peer || written, "{ip} from nowhere");
    }
});
