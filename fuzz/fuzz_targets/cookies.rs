//! A client's Cookie header (and an application's Set-Cookie): any bytes parse without panic,
//! at most MAX_CANDIDATES values come out, and removing tether's cookie removes all of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::cookies;

fuzz_target!(|data: &[u8]| {
    for name in ["tether", "JSESSIONID", "tether-JSESSIONID"] {
        let values = cookies::values(data, name);
        assert!(values.len() <= cookies::MAX_CANDIDATES);
        if let Some(rest) = cookies::without(data, name) {
            assert!(
                cookies::values(&rest, name).is_empty(),
                "{name} left in the Cookie header"
            );
            assert!(
                !rest.contains(&b'\r') && !rest.contains(&b'\n')
                    || data.contains(&b'\r')
                    || data.contains(&b'\n'),
                "line breaks made up"
            );
        }
        let _ = cookies::set_cookie_value(data, name);
    }
});
