//! The plugin configuration: any bytes are refused or accepted without panic, and an accepted
//! configuration builds its plugin (the default policy and every route's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::config::Config;
use tether::plugin::Plugin;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = Config::parse(data) {
        let plugin = Plugin::new(&config, &[7; 32]);
        assert!(plugin.policy(0).is_some());
    }
});
