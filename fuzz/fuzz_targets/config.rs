//! The plugin configuration: any bytes are refused or accepted without panic, and an accepted
//! configuration builds its engines (the default and every route's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::config::PluginConfig;
use tether::session::Engine;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = PluginConfig::parse(data) {
        let _ = Engine::new(config.default, [7; 32]);
        for (_, settings) in config.routes {
            if let Some(s) = settings {
                let _ = Engine::new(s, [7; 32]);
            }
        }
    }
});
