//! The `envoy_dynamic_module_on_http_filter_*` hooks. Envoy 1.40 refuses a filter configuration
//! whose module lacks any of the 30, so each is exported; those tether has no use for (body and
//! trailer phases, callouts, a stream's scheduler, watermarks, per-route configuration) do
//! nothing and let the stream go on.
//!
//! Ownership: a configuration is a `Box<Box<dyn FilterConfig>>` and a filter a `Box<Slot>`, each
//! handed to Envoy as a thin pointer and taken back in its `_destroy` hook, the only place either
//! is freed.

use crate::sys::{self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, ModulePtr};
use crate::{
    caught, envoy_bytes, guarded, ConfigHandle, EnvoyFilter, Filter, FilterConfig, NEW_CONFIG,
};
use std::marker::PhantomData;

type ConfigBox = Box<dyn FilterConfig>;

/// A stream's filter; `None` when the configuration made none (or panicked making it): every
/// phase then lets the stream go on.
pub(crate) struct Slot {
    filter: Option<Box<dyn Filter>>,
}

impl Slot {
    #[cfg(test)]
    pub(crate) fn with(filter: Box<dyn Filter>) -> Slot {
        Slot {
            filter: Some(filter),
        }
    }
}

fn envoy_filter<'a>(ptr: FilterEnvoyPtr) -> EnvoyFilter<'a> {
    EnvoyFilter {
        ptr,
        _hook: PhantomData,
    }
}

/// Runs `phase` on the stream's filter, if it has one.
///
/// # Safety
/// `module` must be a pointer `on_http_filter_new` returned and Envoy has not destroyed.
unsafe fn with_filter<T>(
    hook: &str,
    envoy: FilterEnvoyPtr,
    module: ModulePtr,
    fallback: T,
    phase: impl FnOnce(&mut dyn Filter, &mut EnvoyFilter<'_>) -> T,
) -> T {
    if module.is_null() {
        return fallback;
    }
    // SAFETY: by the caller's contract `module` is our live `Slot`; Envoy calls a stream's
    // hooks one at a time on its worker thread, so this is the only reference.
    let slot = unsafe { &mut *(module as *mut Slot) };
    let Some(filter) = slot.filter.as_deref_mut() else {
        return fallback;
    };
    match caught(hook, || phase(filter, &mut envoy_filter(envoy))) {
        Some(v) => v,
        None => {
            // A filter that panicked may be half-way through a change: the rest of its stream
            // goes on without it.
            let broken = slot.filter.take();
            let _ = caught(hook, move || drop(broken));
            fallback
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guarded("on_http_filter_config_new", std::ptr::null(), || {
        let Some(new_config) = NEW_CONFIG.get() else {
            return std::ptr::null();
        };
        // SAFETY: Envoy's name and configuration bytes are valid for this call.
        let (name, bytes) = unsafe { (envoy_bytes(name), envoy_bytes(config)) };
        let mut handle = ConfigHandle {
            ptr: config_envoy,
            _hook: PhantomData,
        };
        match new_config(&mut handle, name, bytes) {
            Some(config) => Box::into_raw(Box::new(config)) as ModulePtr,
            None => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if config.is_null() {
        return;
    }
    guarded("on_http_filter_config_destroy", (), || {
        // SAFETY: `config` came from `Box::into_raw` in `config_new`; Envoy destroys it once,
        // after the last filter it made.
        drop(unsafe { Box::from_raw(config as *mut ConfigBox) });
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    envoy: FilterEnvoyPtr,
) -> ModulePtr {
    // A stream whose filter could not be made still gets a slot: Envoy closes a stream whose
    // filter is null, and tether failing must never fail a request.
    let filter = if config.is_null() {
        None
    } else {
        // SAFETY: `config` is a live configuration of ours (Envoy keeps it while it makes
        // filters from it); shared, as `FilterConfig` is `Sync`.
        let config = unsafe { &*(config as *const ConfigBox) };
        guarded("on_http_filter_new", None, || {
            config.new_filter(&mut envoy_filter(envoy))
        })
    };
    Box::into_raw(Box::new(Slot { filter })) as ModulePtr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: ModulePtr) {
    if module.is_null() {
        return;
    }
    guarded("on_http_filter_destroy", (), || {
        // SAFETY: `module` came from `Box::into_raw` in `filter_new`; Envoy destroys it once.
        drop(unsafe { Box::from_raw(module as *mut Slot) });
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy passes the pointer `filter_new` returned for this stream.
    unsafe {
        with_filter(
            "on_http_filter_request_headers",
            envoy,
            module,
            sys::STATUS_CONTINUE,
            |f, e| f.on_request_headers(e, end_of_stream).code(),
        )
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: as above.
    unsafe {
        with_filter(
            "on_http_filter_response_headers",
            envoy,
            module,
            sys::STATUS_CONTINUE,
            |f, e| f.on_response_headers(e, end_of_stream).code(),
        )
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    envoy: FilterEnvoyPtr,
    module: ModulePtr,
    response_code: u32,
    details: EnvoyBuffer,
    _reset_imminent: bool,
) -> u32 {
    // SAFETY: as above; `details` is valid for this call.
    unsafe {
        let details = envoy_bytes(details);
        with_filter("on_http_filter_local_reply", envoy, module, (), |f, e| {
            f.on_local_reply(e, response_code, details)
        });
    }
    sys::LOCAL_REPLY_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    module: ModulePtr,
) {
    // SAFETY: as above.
    unsafe {
        with_filter(
            "on_http_filter_stream_complete",
            envoy,
            module,
            (),
            |f, e| f.on_stream_complete(e),
        )
    }
}

// The hooks below are required by Envoy and unused by tether.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    // tether has no per-route configuration (routes are named in its own JSON): refused.
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: ModulePtr) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    sys::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
) -> u32 {
    sys::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    sys::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
) -> u32 {
    sys::STATUS_CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ModulePtr,
    event_id: u64,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: `config` is a live configuration of ours: Envoy runs a scheduled event only while
    // the configuration it was committed for exists; shared, as `FilterConfig` is `Sync`.
    let config = unsafe { &*(config as *const ConfigBox) };
    guarded("on_http_filter_config_scheduled", (), || {
        let mut handle = ConfigHandle {
            ptr: config_envoy,
            _hook: PhantomData,
        };
        config.on_scheduled(&mut handle, event_id);
    });
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _config_envoy: ConfigEnvoyPtr,
    _config: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _module: ModulePtr,
) {
}
