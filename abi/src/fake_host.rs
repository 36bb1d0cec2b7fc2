//! A stand-in for Envoy's side of the callbacks `sys` declares, in the test binary only (feature
//! `fake-host`): one stream's header maps, attributes and what the module asked for, kept per
//! thread. The safe API and the adapter above it are tested against it without Envoy. It follows
//! the ABI's documented behaviour where tether depends on it: `set_header` with an empty or null
//! value removes the header, `add_header` refuses an empty value, `get_header` reports the count.

use crate::sys::{EnvoyBuffer, EnvoyHttpHeader, ModuleBuffer, ModuleHttpHeader};
use crate::{ConfigHandle, EnvoyFilter};
use std::cell::RefCell;
use std::ffi::c_void;
use std::marker::PhantomData;

pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What one fake stream holds and what the module did to it.
#[derive(Debug, Default)]
pub struct Host {
    pub request: Pairs,
    pub response: Pairs,
    pub attributes: Vec<(u32, Vec<u8>)>,
    pub cluster: Option<Vec<u8>>,
    pub override_host: Option<(String, bool)>,
    pub route_cache_cleared: usize,
    /// (status, headers, body, details) of the last local reply.
    pub sent: Option<(u32, Pairs, Vec<u8>, Vec<u8>)>,
    /// Defined metrics by id: (name, value); gauges may go below zero.
    pub metrics: Vec<(String, i64)>,
    /// The label names each metric was defined with, by id.
    pub label_names: Vec<Vec<String>>,
    /// The values of labelled metrics: (id, label values, value).
    pub labeled: Vec<(usize, Vec<String>, i64)>,
    pub logs: Vec<(u32, String)>,
    /// Schedulers made, and the event ids committed on them, in order.
    pub schedulers: usize,
    /// Envoy makes no scheduler (`scheduler_new` returns null).
    pub no_scheduler: bool,
    pub committed: Vec<u64>,
    pub schedulers_deleted: usize,
    /// Lines below this level are not enabled.
    pub log_level: u32,
    /// Envoy's generic secrets by name: (config source it is served from, value).
    pub secrets: Vec<(String, Option<String>, Vec<u8>)>,
    /// Subscriptions made, by id - 1: the secret's name.
    pub subscribed: Vec<String>,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

/// Starts a fresh stream on this thread.
pub fn reset() {
    HOST.with(|h| *h.borrow_mut() = Host::default());
}

pub fn with_host<T>(f: impl FnOnce(&mut Host) -> T) -> T {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// The metric's value by name.
pub fn metric(name: &str) -> Option<i64> {
    with_host(|h| h.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
}

/// The value of the labelled metric `name` with these label values.
pub fn labeled_metric(name: &str, values: &[&str]) -> Option<i64> {
    with_host(|h| {
        let id = h.metrics.iter().position(|(n, _)| n == name)?;
        h.labeled
            .iter()
            .find(|(i, v, _)| *i == id && v.iter().map(String::as_str).eq(values.iter().copied()))
            .map(|(_, _, n)| *n)
    })
}

/// A handle on the fake stream (its pointer is never dereferenced).
pub fn filter<'a>() -> EnvoyFilter<'a> {
    EnvoyFilter {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
        _hook: PhantomData,
    }
}

/// A handle on the fake configuration.
pub fn config<'a>() -> ConfigHandle<'a> {
    ConfigHandle {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
        _hook: PhantomData,
    }
}

/// # Safety
/// `b` must be null or point at `b.length` readable bytes.
unsafe fn bytes(b: ModuleBuffer) -> Option<Vec<u8>> {
    if b.ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }.to_vec())
}

fn map(h: &mut Host, header_type: u32) -> Option<&mut Pairs> {
    match header_type {
        crate::sys::header_type::REQUEST_HEADER => Some(&mut h.request),
        crate::sys::header_type::RESPONSE_HEADER => Some(&mut h.response),
        _ => None,
    }
}

fn envoy_buffer(v: &[u8]) -> EnvoyBuffer {
    EnvoyBuffer {
        ptr: v.as_ptr().cast(),
        length: v.len(),
    }
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer) {
    // SAFETY: the module passes its own live bytes.
    let text = unsafe { bytes(message) }.unwrap_or_default();
    with_host(|h| {
        h.logs
            .push((level, String::from_utf8_lossy(&text).into_owned()))
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool {
    with_host(|h| level >= h.log_level)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _filter: *mut c_void,
    header_type: u32,
    key: ModuleBuffer,
    result: *mut EnvoyBuffer,
    index: usize,
    optional_size: *mut usize,
) -> bool {
    // SAFETY: the module passes its own live key bytes.
    let key = unsafe { bytes(key) }.unwrap_or_default();
    with_host(|h| {
        let Some(m) = map(h, header_type) else {
            return false;
        };
        let values: Vec<&Vec<u8>> = m
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect();
        if !optional_size.is_null() {
            // SAFETY: a non-null out-pointer from the module.
            unsafe { *optional_size = values.len() };
        }
        let found = values.get(index).map(|v| envoy_buffer(v));
        // SAFETY: the module's valid out-pointer; the bytes live in HOST until it changes.
        unsafe { *result = found.unwrap_or(EnvoyBuffer::EMPTY) };
        found.is_some()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_headers_size(
    _filter: *mut c_void,
    header_type: u32,
) -> usize {
    with_host(|h| map(h, header_type).map_or(0, |m| m.len()))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_headers(
    _filter: *mut c_void,
    header_type: u32,
    result: *mut EnvoyHttpHeader,
) -> bool {
    with_host(|h| {
        let Some(m) = map(h, header_type) else {
            return false;
        };
        for (i, (k, v)) in m.iter().enumerate() {
            // SAFETY: the module sized the array with `get_headers_size`.
            unsafe {
                *result.add(i) = EnvoyHttpHeader {
                    key_ptr: k.as_ptr().cast(),
                    key_length: k.len(),
                    value_ptr: v.as_ptr().cast(),
                    value_length: v.len(),
                }
            };
        }
        true
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _filter: *mut c_void,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: the module's own live bytes (or null).
    let (key, value) = unsafe { (bytes(key).unwrap_or_default(), bytes(value)) };
    with_host(|h| {
        let Some(m) = map(h, header_type) else {
            return false;
        };
        m.retain(|(k, _)| *k != key);
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            m.push((key, v));
        }
        true
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_header(
    _filter: *mut c_void,
    header_type: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: the module's own live bytes (or null).
    let (key, value) = unsafe { (bytes(key).unwrap_or_default(), bytes(value)) };
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return false;
    };
    with_host(|h| match map(h, header_type) {
        Some(m) => {
            m.push((key, value));
            true
        }
        None => false,
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_send_response(
    _filter: *mut c_void,
    status_code: u32,
    headers: *mut ModuleHttpHeader,
    headers_size: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    let mut pairs = Vec::new();
    for i in 0..headers_size {
        // SAFETY: the module passes an array of `headers_size` live headers.
        let h = unsafe { *headers.add(i) };
        let k = ModuleBuffer {
            ptr: h.key_ptr,
            length: h.key_length,
        };
        let v = ModuleBuffer {
            ptr: h.value_ptr,
            length: h.value_length,
        };
        // SAFETY: each header's bytes are the module's and live during the call.
        pairs.push(unsafe { (bytes(k).unwrap_or_default(), bytes(v).unwrap_or_default()) });
    }
    // SAFETY: the module's own live bytes.
    let (body, details) = unsafe { (bytes(body), bytes(details)) };
    with_host(|h| {
        h.sent = Some((
            status_code,
            pairs,
            body.unwrap_or_default(),
            details.unwrap_or_default(),
        ))
    });
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    _filter: *mut c_void,
    attribute_id: u32,
    result: *mut EnvoyBuffer,
) -> bool {
    with_host(|h| {
        let found = h
            .attributes
            .iter()
            .find(|(id, _)| *id == attribute_id)
            .map(|(_, v)| envoy_buffer(v));
        // SAFETY: the module's valid out-pointer.
        unsafe { *result = found.unwrap_or(EnvoyBuffer::EMPTY) };
        found.is_some()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_cluster_name(
    _filter: *mut c_void,
    result: *mut EnvoyBuffer,
) -> bool {
    with_host(|h| {
        let found = h.cluster.as_deref().map(envoy_buffer);
        // SAFETY: the module's valid out-pointer.
        unsafe { *result = found.unwrap_or(EnvoyBuffer::EMPTY) };
        found.is_some()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_upstream_override_host(
    _filter: *mut c_void,
    host: ModuleBuffer,
    strict: bool,
) -> bool {
    // SAFETY: the module's own live bytes.
    let host = unsafe { bytes(host) }.unwrap_or_default();
    let host = String::from_utf8_lossy(&host).into_owned();
    // Envoy takes IP literals only.
    if host.parse::<std::net::SocketAddr>().is_err() {
        return false;
    }
    with_host(|h| h.override_host = Some((host, strict)));
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(_filter: *mut c_void) {
    with_host(|h| h.route_cache_cleared += 1);
}

/// Strings from an array of `n` module buffers (null for none).
///
/// # Safety
/// `array` is null or points at `n` buffers, each valid as `bytes` requires.
unsafe fn strings(array: *mut ModuleBuffer, n: usize) -> Vec<String> {
    if array.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let buffers = unsafe { std::slice::from_raw_parts(array, n) };
    buffers
        .iter()
        // SAFETY: each buffer is the module's live bytes.
        .map(|b| String::from_utf8_lossy(&unsafe { bytes(*b) }.unwrap_or_default()).into_owned())
        .collect()
}

/// Envoy's `envoy_dynamic_module_type_metrics_result_InvalidLabels`: a count of label values
/// that is not the metric's count of labels.
pub const METRICS_INVALID_LABELS: u32 = 2;
const METRICS_NOT_FOUND: u32 = 1;

fn define(name: ModuleBuffer, labels: Vec<String>, id: *mut usize) -> u32 {
    // SAFETY: the module's own live bytes.
    let name = unsafe { bytes(name) }.unwrap_or_default();
    with_host(|h| {
        h.metrics
            .push((String::from_utf8_lossy(&name).into_owned(), 0));
        h.label_names.push(labels);
        // SAFETY: the module's valid out-pointer.
        unsafe { *id = h.metrics.len() - 1 };
    });
    crate::sys::METRICS_SUCCESS
}

fn bump(id: usize, values: Vec<String>, delta: i64) -> u32 {
    with_host(|h| {
        let Some(names) = h.label_names.get(id) else {
            return METRICS_NOT_FOUND;
        };
        if names.len() != values.len() {
            return METRICS_INVALID_LABELS;
        }
        if values.is_empty() {
            return match h.metrics.get_mut(id) {
                Some((_, v)) => {
                    *v += delta;
                    crate::sys::METRICS_SUCCESS
                }
                None => METRICS_NOT_FOUND,
            };
        }
        match h
            .labeled
            .iter_mut()
            .find(|(i, v, _)| *i == id && *v == values)
        {
            Some((_, _, n)) => *n += delta,
            None => h.labeled.push((id, values, delta)),
        }
        crate::sys::METRICS_SUCCESS
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _config: *mut c_void,
    name: ModuleBuffer,
    label_names: *mut ModuleBuffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    define(
        name,
        unsafe { strings(label_names, label_names_length) },
        id,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    _config: *mut c_void,
    name: ModuleBuffer,
    label_names: *mut ModuleBuffer,
    label_names_length: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    define(
        name,
        unsafe { strings(label_names, label_names_length) },
        id,
    )
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _filter: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_gauge(
    _filter: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
    _filter: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, -i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
    _config: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
    _config: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, i64::try_from(value).unwrap_or(i64::MAX))
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
    _config: *mut c_void,
    id: usize,
    label_values: *mut ModuleBuffer,
    label_values_length: usize,
    value: u64,
) -> u32 {
    // SAFETY: the module passes its own array of that length.
    let values = unsafe { strings(label_values, label_values_length) };
    bump(id, values, -i64::try_from(value).unwrap_or(i64::MAX))
}

/// The fake's schedulers are never dereferenced: any non-null pointer will do.
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
    _config: *mut c_void,
) -> *mut c_void {
    if with_host(|h| h.no_scheduler) {
        return std::ptr::null_mut();
    }
    with_host(|h| h.schedulers += 1);
    std::ptr::NonNull::<u8>::dangling().as_ptr().cast()
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
    _scheduler: *mut c_void,
    event_id: u64,
) {
    with_host(|h| h.committed.push(event_id));
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
    _scheduler: *mut c_void,
) {
    with_host(|h| h.schedulers_deleted += 1);
}

/// Subscribes when the secret exists with that source (an empty source: the bootstrap's).
#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_generic_secret_subscribe(
    _config: *mut c_void,
    name: ModuleBuffer,
    config_source: ModuleBuffer,
) -> u64 {
    // SAFETY: the module passes its own live bytes.
    let name = unsafe { bytes(name) }.unwrap_or_default();
    // SAFETY: as above.
    let source = unsafe { bytes(config_source) }.unwrap_or_default();
    let name = String::from_utf8_lossy(&name).into_owned();
    let source = (!source.is_empty()).then(|| String::from_utf8_lossy(&source).into_owned());
    with_host(|h| {
        if !h.secrets.iter().any(|(n, s, _)| *n == name && *s == source) {
            return 0;
        }
        h.subscribed.push(name);
        h.subscribed.len() as u64
    })
}

fn secret_value(id: u64, result: *mut EnvoyBuffer) -> bool {
    with_host(|h| {
        let name = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| h.subscribed.get(i));
        let value = name.and_then(|n| h.secrets.iter().find(|(s, _, _)| s == n));
        let found = value.map(|(_, _, v)| envoy_buffer(v));
        // SAFETY: the module's valid out-pointer.
        unsafe { *result = found.unwrap_or(EnvoyBuffer::EMPTY) };
        found.is_some()
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_get_generic_secret(
    _config: *mut c_void,
    id: u64,
    result: *mut EnvoyBuffer,
) -> bool {
    secret_value(id, result)
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_generic_secret(
    _filter: *mut c_void,
    id: u64,
    result: *mut EnvoyBuffer,
) -> bool {
    secret_value(id, result)
}
