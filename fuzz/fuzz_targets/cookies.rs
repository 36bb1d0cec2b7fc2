//! A client's Cookie header (and an application's Set-Cookie): any bytes parse without panic,
//! at most MAX_CANDIDATES values come out of every field, and removing tether's cookie removes
//! all of it; cookie dates and paths parse without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::cookies;

fuzz_target!(|data: &[u8]| {
    // The input split at its first NUL: two fields of the Cookie header.
    let mut parts = data.splitn(2, |&b| b == 0);
    let fields = [
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    ];
    for name in ["tether", "JSESSIONID", "tether-JSESSIONID"] {
        let values = cookies::values(fields, name);
        assert!(values.len() <= cookies::MAX_CANDIDATES);
        if let Some(rest) = cookies::without(fields, &[name]) {
            assert!(
                cookies::values([rest.as_slice()], name).is_empty(),
                "{name} left in the Cookie header"
            );
            assert!(
                !rest.contains(&b'\r') && !rest.contains(&b'\n')
                    || data.contains(&b'\r')
                    || data.contains(&b'\n'),
                "line breaks made up"
            );
        }
        let _ = cookies::set_cookie_value(data, name, 1_700_000_000_000);
    }
    let _ = cookies::cookie_date_ms(data);
    let _ = cookies::path_matches(data, "/app");
});
