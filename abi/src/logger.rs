//! The `log` crate's records, in Envoy's log (its `dynamic_modules` component). A line is only
//! formatted when Envoy would print it at its current level.

use crate::sys;

struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

/// Sends `log` records to Envoy from now on (once per process; a second call changes nothing).
pub(crate) fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        refresh_level();
    }
}

/// Sets the `log` crate's level to the most verbose one Envoy prints now, so that a line Envoy
/// would drop costs the `log` macro's comparison instead of a call into Envoy on every request.
/// Envoy's level can change at any time (`/logging`): the module calls this again on each tick of
/// its metrics thread, and a line that passes is still asked of Envoy before it is formatted.
pub fn refresh_level() {
    use log::Level::{Debug, Error, Info, Trace, Warn};
    let most = [Trace, Debug, Info, Warn, Error]
        .into_iter()
        .find(|l| enabled(envoy_level(*l)));
    log::set_max_level(most.map_or(log::LevelFilter::Off, |l| l.to_level_filter()));
}

fn envoy_level(level: log::Level) -> u32 {
    match level {
        log::Level::Error => sys::log_level::ERROR,
        log::Level::Warn => sys::log_level::WARN,
        log::Level::Info => sys::log_level::INFO,
        log::Level::Debug => sys::log_level::DEBUG,
        log::Level::Trace => sys::log_level::TRACE,
    }
}

fn enabled(level: u32) -> bool {
    // SAFETY: a process-wide query with no pointers; callable from any thread.
    unsafe { sys::envoy_dynamic_module_callback_log_enabled(level) }
}

fn write(level: u32, message: &str) {
    // SAFETY: the message is read during the call only; callable from any thread.
    unsafe {
        sys::envoy_dynamic_module_callback_log(level, sys::ModuleBuffer::of(message.as_bytes()))
    }
}

/// A line at Envoy's critical level (panics), whatever the `log` crate's settings.
pub fn log_critical(message: &str) {
    write(sys::log_level::CRITICAL, message);
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        enabled(envoy_level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = envoy_level(record.level());
        if enabled(level) {
            write(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}
