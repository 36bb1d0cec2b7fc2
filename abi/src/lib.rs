//! Envoy 1.40's dynamic-module ABI (v0.2.0) as tether uses it, declared here (Envoy's own Rust
//! SDK is built against Envoy's source tree and is not published), behind a safe API: a module
//! implements `FilterConfig` and `Filter`, names its configuration factory with
//! `declare_module!`, and never touches a raw pointer.
//!
//! Every hook Envoy calls catches a panic (the native profile unwinds): the request goes on as if
//! the module had not been there, and the panic is logged and counted (`panics_caught`). A panic
//! must never unwind into Envoy's C++ frames.

// The only crate of tether where `unsafe` is allowed: the FFI declarations, the exported hooks
// and the conversions of Envoy's pointers. Each block says why it holds (clippy enforces it).
#![allow(unsafe_code)]

mod hooks;
pub(crate) mod logger;
pub mod sys;

#[cfg(any(test, feature = "fake-host"))]
pub mod fake_host;

use std::ffi::c_char;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use logger::{log_critical, refresh_level as refresh_log_level};

/// The ABI version this module is written against; Envoy logs "Dynamic module ABI version
/// v0.2.0 matched." when it is the one Envoy speaks.
pub const ABI_VERSION: &str = "v0.2.0";
const ABI_VERSION_C: &[u8] = b"v0.2.0\0";

/// Makes a filter configuration from the filter's name and its configuration bytes (the
/// `filter_config` Envoy was given); `None` refuses the configuration, and Envoy with it.
pub type NewConfig =
    fn(config: &mut ConfigHandle<'_>, name: &[u8], bytes: &[u8]) -> Option<Box<dyn FilterConfig>>;

static NEW_CONFIG: OnceLock<NewConfig> = OnceLock::new();
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many panics the hooks have caught in this process.
pub fn panics_caught() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// The module's `envoy_dynamic_module_on_program_init`: Envoy calls it once, when it loads the
/// library. Use `declare_module!`, which exports it.
pub fn program_init(new_config: NewConfig) -> *const c_char {
    logger::install();
    std::panic::set_hook(Box::new(|info| {
        log_critical(&format!("tether: panic: {info}"));
    }));
    // A second call (Envoy loads a library once per process) keeps the first factory.
    let _ = NEW_CONFIG.set(new_config);
    ABI_VERSION_C.as_ptr().cast()
}

/// Exports `envoy_dynamic_module_on_program_init`, which registers `$new_config` (a `NewConfig`)
/// as the module's configuration factory. Exporting a symbol is an unsafe attribute: invoke it
/// inside a module that allows `unsafe_code`, the one such line of the adapter.
#[macro_export]
macro_rules! declare_module {
    ($new_config:path) => {
        #[no_mangle]
        pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const ::std::ffi::c_char {
            $crate::program_init($new_config)
        }
    };
}

/// Runs a hook's body; `None` when it panicked (logged and counted).
fn caught<T>(hook: &str, body: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => Some(v),
        Err(_) => {
            let n = PANICS.fetch_add(1, Ordering::Relaxed) + 1;
            log_critical(&format!(
                "tether: a panic in {hook} was caught; the request goes on without tether ({n} so far)"
            ));
            None
        }
    }
}

/// Runs a hook's body; a panic becomes `fallback`.
fn guarded<T>(hook: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    caught(hook, body).unwrap_or(fallback)
}

/// One filter configuration, shared by every worker thread.
pub trait FilterConfig: Send + Sync {
    /// The filter of a new stream; `None`: this stream goes on without one.
    fn new_filter(&self, envoy: &mut EnvoyFilter<'_>) -> Option<Box<dyn Filter>>;

    /// An event committed on one of this configuration's schedulers (`ConfigHandle::scheduler`),
    /// run on Envoy's main thread.
    fn on_scheduled(&self, _config: &mut ConfigHandle<'_>, _event_id: u64) {}
}

/// What a phase hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Continue,
    /// Stop the filter chain here (after a local reply replaced the response).
    Stop,
}

impl Status {
    fn code(self) -> u32 {
        match self {
            Status::Continue => sys::STATUS_CONTINUE,
            Status::Stop => sys::STATUS_STOP_ITERATION,
        }
    }
}

/// One stream's filter, on the worker thread that runs the stream. Each phase defaults to
/// "continue, unchanged".
pub trait Filter {
    fn on_request_headers(&mut self, _envoy: &mut EnvoyFilter<'_>, _end_of_stream: bool) -> Status {
        Status::Continue
    }
    fn on_response_headers(
        &mut self,
        _envoy: &mut EnvoyFilter<'_>,
        _end_of_stream: bool,
    ) -> Status {
        Status::Continue
    }
    /// Envoy is about to answer the stream itself; `details` says why
    /// (`response.code_details`).
    fn on_local_reply(&mut self, _envoy: &mut EnvoyFilter<'_>, _status: u32, _details: &[u8]) {}
    /// The stream is over (before access logs and before the filter is dropped).
    fn on_stream_complete(&mut self, _envoy: &mut EnvoyFilter<'_>) {}
}

/// Which header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMap {
    Request,
    Response,
}

impl HeaderMap {
    fn code(self) -> u32 {
        match self {
            HeaderMap::Request => sys::header_type::REQUEST_HEADER,
            HeaderMap::Response => sys::header_type::RESPONSE_HEADER,
        }
    }
}

/// The string attributes tether reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `source.address`: the downstream peer, `IP:port`.
    SourceAddress,
    /// `upstream.address`: the endpoint that served, `IP:port` (response phase).
    UpstreamAddress,
    /// `response.code_details`.
    ResponseCodeDetails,
    /// `xds.route_name`.
    RouteName,
    /// `xds.cluster_name`.
    ClusterName,
}

impl Attribute {
    fn id(self) -> u32 {
        match self {
            Attribute::SourceAddress => sys::attribute_id::SOURCE_ADDRESS,
            Attribute::UpstreamAddress => sys::attribute_id::UPSTREAM_ADDRESS,
            Attribute::ResponseCodeDetails => sys::attribute_id::RESPONSE_CODE_DETAILS,
            Attribute::RouteName => sys::attribute_id::XDS_ROUTE_NAME,
            Attribute::ClusterName => sys::attribute_id::XDS_CLUSTER_NAME,
        }
    }
}

/// A metric defined on a configuration; used with the filters that configuration creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricId(usize);

/// Bytes Envoy owns as a slice whose lifetime the caller ties to the borrow it read them under.
///
/// # Safety
/// `b` must be null/empty or point at `b.length` readable bytes that outlive `'a`.
unsafe fn envoy_bytes<'a>(b: sys::EnvoyBuffer) -> &'a [u8] {
    if b.ptr.is_null() || b.length == 0 {
        &[]
    } else {
        // SAFETY: non-null and `length` bytes readable for `'a`, by the caller's contract.
        unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }
    }
}

/// Envoy's configuration object, during one of its hooks (`config_new`, a scheduled event).
/// A subscribed secret's value through one of Envoy's two getters (the configuration's or a
/// stream's filter's); `None` for an id Envoy does not know.
///
/// # Safety
/// `ptr` must be the live object `getter` takes, in the current hook.
unsafe fn secret_through<'a>(
    getter: unsafe extern "C" fn(*mut std::ffi::c_void, u64, *mut sys::EnvoyBuffer) -> bool,
    ptr: *mut std::ffi::c_void,
    id: SecretId,
) -> Option<&'a [u8]> {
    let mut result = sys::EnvoyBuffer::EMPTY;
    // SAFETY: by the caller's contract `ptr` is live; `result` is a valid out-pointer.
    let found = unsafe { getter(ptr, id.0, &mut result) };
    // SAFETY: the value lives in this thread's copy of the secret, valid for this hook.
    found.then(|| unsafe { envoy_bytes(result) })
}

/// A configuration's subscription to one of Envoy's generic secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretId(u64);

pub struct ConfigHandle<'a> {
    ptr: sys::ConfigEnvoyPtr,
    _hook: PhantomData<&'a mut ()>,
}

impl ConfigHandle<'_> {
    /// Subscribes to Envoy's generic secret `name` (from the bootstrap when `config_source` is
    /// `None`, else by SDS from that `ConfigSource` JSON); only while the configuration is made.
    /// `None`: Envoy refused (no such static secret, a bad source; Envoy logs why).
    pub fn subscribe_secret(
        &mut self,
        name: &str,
        config_source: Option<&str>,
    ) -> Option<SecretId> {
        // SAFETY: live configuration, in its `config_new` hook; both buffers are read during
        // the call only.
        let id = unsafe {
            sys::envoy_dynamic_module_callback_http_filter_config_generic_secret_subscribe(
                self.ptr,
                sys::ModuleBuffer::of(name.as_bytes()),
                sys::ModuleBuffer::of(config_source.unwrap_or("").as_bytes()),
            )
        };
        (id != 0).then_some(SecretId(id))
    }

    /// A subscribed secret's current value; `None` for an id Envoy does not know.
    pub fn secret(&self, id: SecretId) -> Option<&[u8]> {
        // SAFETY: `self.ptr` is this hook's live configuration, what the getter takes.
        unsafe {
            secret_through(
                sys::envoy_dynamic_module_callback_http_filter_config_get_generic_secret,
                self.ptr,
                id,
            )
        }
    }

    /// A counter named `name` (no labels).
    pub fn define_counter(&mut self, name: &str) -> Option<MetricId> {
        self.define_counter_with_labels(name, &[])
    }

    /// A gauge named `name` (no labels).
    pub fn define_gauge(&mut self, name: &str) -> Option<MetricId> {
        self.define_gauge_with_labels(name, &[])
    }

    /// A counter named `name` whose every increment names a value for each of `labels`; Envoy
    /// keeps one counter per set of values, shown with the labels as tags.
    pub fn define_counter_with_labels(&mut self, name: &str, labels: &[&str]) -> Option<MetricId> {
        self.define(
            name,
            labels,
            sys::envoy_dynamic_module_callback_http_filter_config_define_counter,
        )
    }

    /// A gauge with labels, as `define_counter_with_labels`.
    pub fn define_gauge_with_labels(&mut self, name: &str, labels: &[&str]) -> Option<MetricId> {
        self.define(
            name,
            labels,
            sys::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        )
    }

    /// A scheduler of this configuration's events (`FilterConfig::on_scheduled`); `None` when
    /// Envoy made none.
    pub fn scheduler(&mut self) -> Option<ConfigScheduler> {
        // SAFETY: live configuration, during its hook.
        let ptr = unsafe {
            sys::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.ptr)
        };
        std::ptr::NonNull::new(ptr).map(|ptr| ConfigScheduler { ptr })
    }

    /// As `EnvoyFilter::increment_counter_with_labels`, for a hook that has no stream.
    pub fn increment_counter_with_labels(
        &mut self,
        id: MetricId,
        values: &[&[u8]],
        by: u64,
    ) -> bool {
        // SAFETY: live configuration, during its hook; `id` is one of its metrics.
        unsafe { count(self.ptr, &CONFIG_METRICS, id, values, by) }
    }

    /// As `EnvoyFilter::add_to_gauge_with_labels`, for a hook that has no stream.
    pub fn add_to_gauge_with_labels(&mut self, id: MetricId, values: &[&[u8]], delta: i64) -> bool {
        // SAFETY: as in `increment_counter_with_labels`.
        unsafe { gauge(self.ptr, &CONFIG_METRICS, id, values, delta) }
    }

    /// Counters and gauges are defined by two callbacks of one signature.
    fn define(&mut self, name: &str, labels: &[&str], callback: DefineMetric) -> Option<MetricId> {
        let mut id = 0usize;
        let mut names: Vec<sys::ModuleBuffer> = labels
            .iter()
            .map(|l| sys::ModuleBuffer::of(l.as_bytes()))
            .collect();
        let names_ptr = if names.is_empty() {
            std::ptr::null_mut()
        } else {
            names.as_mut_ptr()
        };
        // SAFETY: `callback` is one of Envoy's define callbacks, declared in `sys`; `ptr` is
        // the live config object of this hook; the name and the label names (an array of
        // `names.len()` buffers, or null for none) are read during the call; `id` is a valid
        // out-pointer.
        let result = unsafe {
            callback(
                self.ptr,
                sys::ModuleBuffer::of(name.as_bytes()),
                names_ptr,
                names.len(),
                &mut id,
            )
        };
        (result == sys::METRICS_SUCCESS).then_some(MetricId(id))
    }
}

/// The signature of `envoy_dynamic_module_callback_http_filter_config_define_{counter,gauge}`.
type DefineMetric = unsafe extern "C" fn(
    sys::ConfigEnvoyPtr,
    sys::ModuleBuffer,
    *mut sys::ModuleBuffer,
    usize,
    *mut usize,
) -> u32;

/// A scheduler of one configuration's events: each `commit` makes Envoy run the
/// configuration's `on_scheduled` on its main thread (unless the configuration is gone by then).
/// Dropping it deletes it; it must not outlive the configuration's `FilterConfig`.
pub struct ConfigScheduler {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
}

// SAFETY: Envoy's configuration scheduler only posts to the main thread's dispatcher on commit,
// which Envoy allows from any thread, and deleting it touches no thread's state.
unsafe impl Send for ConfigScheduler {}

impl ConfigScheduler {
    pub fn commit(&self, event_id: u64) {
        // SAFETY: a live scheduler Envoy made (deleted only in `drop`).
        unsafe {
            sys::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                self.ptr.as_ptr(),
                event_id,
            );
        }
    }
}

impl Drop for ConfigScheduler {
    fn drop(&mut self) {
        // SAFETY: made by Envoy for the module to delete, once.
        unsafe {
            sys::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                self.ptr.as_ptr(),
            );
        }
    }
}

/// The signature of the metric callbacks, on a stream's filter or on a configuration.
type MetricCallback =
    unsafe extern "C" fn(*mut std::ffi::c_void, usize, *mut sys::ModuleBuffer, usize, u64) -> u32;

/// The three metric callbacks of one kind of Envoy object.
struct MetricCalls {
    counter: MetricCallback,
    gauge_up: MetricCallback,
    gauge_down: MetricCallback,
}

const FILTER_METRICS: MetricCalls = MetricCalls {
    counter: sys::envoy_dynamic_module_callback_http_filter_increment_counter,
    gauge_up: sys::envoy_dynamic_module_callback_http_filter_increment_gauge,
    gauge_down: sys::envoy_dynamic_module_callback_http_filter_decrement_gauge,
};

const CONFIG_METRICS: MetricCalls = MetricCalls {
    counter: sys::envoy_dynamic_module_callback_http_filter_config_increment_counter,
    gauge_up: sys::envoy_dynamic_module_callback_http_filter_config_increment_gauge,
    gauge_down: sys::envoy_dynamic_module_callback_http_filter_config_decrement_gauge,
};

/// Increments the counter `id` with these label values (one per label it was defined with, in
/// order); Envoy refuses another number of values.
///
/// # Safety
/// `ptr` is the live object `calls` take, during a hook of its; `id` is one of its metrics.
unsafe fn count(
    ptr: *mut std::ffi::c_void,
    calls: &MetricCalls,
    id: MetricId,
    values: &[&[u8]],
    by: u64,
) -> bool {
    if values.len() > MAX_LABEL_VALUES {
        return false;
    }
    let mut values = label_values(values);
    let (array, len) = buffers_arg(&mut values);
    // SAFETY: the caller's contract; the label values (an array of `len` buffers, or null for
    // none) are read during the call.
    unsafe { (calls.counter)(ptr, id.0, array, len, by) == sys::METRICS_SUCCESS }
}

/// Moves the gauge `id` with these label values by `delta`, up or down.
///
/// # Safety
/// As `count`.
unsafe fn gauge(
    ptr: *mut std::ffi::c_void,
    calls: &MetricCalls,
    id: MetricId,
    values: &[&[u8]],
    delta: i64,
) -> bool {
    if values.len() > MAX_LABEL_VALUES {
        return false;
    }
    let call = if delta >= 0 {
        calls.gauge_up
    } else {
        calls.gauge_down
    };
    let mut values = label_values(values);
    let (array, len) = buffers_arg(&mut values);
    // SAFETY: as in `count`.
    unsafe { call(ptr, id.0, array, len, delta.unsigned_abs()) == sys::METRICS_SUCCESS }
}

/// Envoy's side of one stream's filter, lent to a hook for its duration. Bytes read from it
/// borrow it: a setter (`&mut self`) may invalidate them, and the borrow checker sees to it that
/// none is used after.
pub struct EnvoyFilter<'a> {
    ptr: sys::FilterEnvoyPtr,
    _hook: PhantomData<&'a mut ()>,
}

impl EnvoyFilter<'_> {
    /// The `index`th value of header `name` (lower case), and how many values it has.
    fn header_at(&self, map: HeaderMap, name: &str, index: usize) -> (Option<&[u8]>, usize) {
        let mut result = sys::EnvoyBuffer::EMPTY;
        let mut count = 0usize;
        // SAFETY: `ptr` is this hook's live filter; key read during the call; `result` and
        // `count` are valid out-pointers.
        let found = unsafe {
            sys::envoy_dynamic_module_callback_http_get_header(
                self.ptr,
                map.code(),
                sys::ModuleBuffer::of(name.as_bytes()),
                &mut result,
                index,
                &mut count,
            )
        };
        // SAFETY: Envoy's header bytes stay valid until the hook ends or a setter runs; both
        // are excluded while `&self` is borrowed.
        let value = found.then(|| unsafe { envoy_bytes(result) });
        (value, count)
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, map: HeaderMap, name: &str) -> Option<&[u8]> {
        self.header_at(map, name, 0).0
    }

    /// Every value of header `name` (lower case), in order.
    pub fn header_values(&self, map: HeaderMap, name: &str) -> Vec<&[u8]> {
        let (first, count) = self.header_at(map, name, 0);
        let mut values = Vec::with_capacity(count);
        values.extend(first);
        for i in 1..count {
            if let (Some(v), _) = self.header_at(map, name, i) {
                values.push(v);
            }
        }
        values
    }

    /// The whole map, (name, value) in order.
    pub fn headers(&self, map: HeaderMap) -> Vec<(&[u8], &[u8])> {
        // SAFETY: `ptr` is this hook's live filter.
        let n = unsafe {
            sys::envoy_dynamic_module_callback_http_get_headers_size(self.ptr, map.code())
        };
        let mut raw = vec![sys::EnvoyHttpHeader::EMPTY; n];
        // SAFETY: `raw` has room for the `n` headers Envoy just counted; nothing changes the
        // map between the two calls (same thread, same hook).
        let ok = unsafe {
            sys::envoy_dynamic_module_callback_http_get_headers(
                self.ptr,
                map.code(),
                raw.as_mut_ptr(),
            )
        };
        if !ok {
            return Vec::new();
        }
        raw.iter()
            .map(|h| {
                let key = sys::EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                };
                let value = sys::EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                };
                // SAFETY: as in `header_at`: valid while `&self` is borrowed.
                unsafe { (envoy_bytes(key), envoy_bytes(value)) }
            })
            .collect()
    }

    /// Replaces every value of `name` with `value`. Envoy removes the header when `value` is
    /// empty.
    pub fn set_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: live filter; key and value are read during the call.
        unsafe {
            sys::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map.code(),
                sys::ModuleBuffer::of(name.as_bytes()),
                sys::ModuleBuffer::of(value),
            )
        }
    }

    /// Adds one more value. Envoy refuses an empty one (`false`).
    pub fn add_header(&mut self, map: HeaderMap, name: &str, value: &[u8]) -> bool {
        // SAFETY: live filter; key and value are read during the call.
        unsafe {
            sys::envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                map.code(),
                sys::ModuleBuffer::of(name.as_bytes()),
                sys::ModuleBuffer::of(value),
            )
        }
    }

    /// Removes every value of `name`.
    pub fn remove_header(&mut self, map: HeaderMap, name: &str) -> bool {
        // SAFETY: live filter; a null value asks Envoy to remove the key.
        unsafe {
            sys::envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                map.code(),
                sys::ModuleBuffer::of(name.as_bytes()),
                sys::ModuleBuffer::NULL,
            )
        }
    }

    /// A string attribute; `None` when Envoy has none (or does not serve it).
    pub fn attribute(&self, attribute: Attribute) -> Option<&[u8]> {
        let mut result = sys::EnvoyBuffer::EMPTY;
        // SAFETY: live filter; `result` is a valid out-pointer.
        let found = unsafe {
            sys::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                attribute.id(),
                &mut result,
            )
        };
        // SAFETY: attribute bytes live in Envoy's stream info, valid for this hook.
        found.then(|| unsafe { envoy_bytes(result) })
    }

    /// A secret the configuration subscribed to, as it is now on this worker (rotations by
    /// SDS reach each worker in turn); `None` for an id Envoy does not know.
    pub fn secret(&self, id: SecretId) -> Option<&[u8]> {
        // SAFETY: `self.ptr` is this hook's live filter, what the getter takes.
        unsafe {
            secret_through(
                sys::envoy_dynamic_module_callback_http_filter_get_generic_secret,
                self.ptr,
                id,
            )
        }
    }

    /// The cluster the request is routed to.
    pub fn cluster_name(&self) -> Option<&[u8]> {
        let mut result = sys::EnvoyBuffer::EMPTY;
        // SAFETY: live filter; `result` is a valid out-pointer.
        let found = unsafe {
            sys::envoy_dynamic_module_callback_http_get_cluster_name(self.ptr, &mut result)
        };
        // SAFETY: the name lives in the route's cluster info, valid for this hook.
        found.then(|| unsafe { envoy_bytes(result) })
    }

    /// Asks the load balancer for `host` (`IP:port`) first. `strict`: no other endpoint if it is
    /// not available. `false`: not an IP literal, or not in the request phase.
    pub fn set_upstream_override_host(&mut self, host: &str, strict: bool) -> bool {
        // SAFETY: live filter; the host is copied by Envoy during the call.
        unsafe {
            sys::envoy_dynamic_module_callback_http_set_upstream_override_host(
                self.ptr,
                sys::ModuleBuffer::of(host.as_bytes()),
                strict,
            )
        }
    }

    /// Makes Envoy match the route again (request headers it matches on have changed).
    pub fn clear_route_cache(&mut self) {
        // SAFETY: live filter.
        unsafe { sys::envoy_dynamic_module_callback_http_clear_route_cache(self.ptr) }
    }

    /// Answers the stream with this response instead of whatever was coming.
    pub fn send_response(
        &mut self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let mut raw: Vec<sys::ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| sys::ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: live filter; the header array, body and details are read during the call.
        unsafe {
            sys::envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                sys::ModuleBuffer::of(body),
                sys::ModuleBuffer::of(details.as_bytes()),
            )
        }
    }

    pub fn increment_counter(&mut self, id: MetricId, by: u64) -> bool {
        self.increment_counter_with_labels(id, &[], by)
    }

    /// Moves a gauge by `delta`, up or down.
    pub fn add_to_gauge(&mut self, id: MetricId, delta: i64) -> bool {
        self.add_to_gauge_with_labels(id, &[], delta)
    }

    /// Increments the counter of `id` that has these label values (one per label the metric
    /// was defined with, in order); Envoy refuses another number of values.
    pub fn increment_counter_with_labels(
        &mut self,
        id: MetricId,
        values: &[&[u8]],
        by: u64,
    ) -> bool {
        // SAFETY: live filter; `id` came from the configuration that created it.
        unsafe { count(self.ptr, &FILTER_METRICS, id, values, by) }
    }

    /// Moves the gauge of `id` that has these label values by `delta`, up or down.
    pub fn add_to_gauge_with_labels(&mut self, id: MetricId, values: &[&[u8]], delta: i64) -> bool {
        // SAFETY: as in `increment_counter_with_labels`.
        unsafe { gauge(self.ptr, &FILTER_METRICS, id, values, delta) }
    }
}

/// Label values an increment can name: on the stack, since increments are on the request path.
pub const MAX_LABEL_VALUES: usize = 4;

/// The values as Envoy's buffers (callers refuse more than `MAX_LABEL_VALUES` first).
fn label_values(values: &[&[u8]]) -> LabelValues {
    let mut buffers = [sys::ModuleBuffer::NULL; MAX_LABEL_VALUES];
    for (b, v) in buffers.iter_mut().zip(values) {
        *b = sys::ModuleBuffer::of(v);
    }
    LabelValues {
        buffers,
        len: values.len().min(MAX_LABEL_VALUES),
    }
}

struct LabelValues {
    buffers: [sys::ModuleBuffer; MAX_LABEL_VALUES],
    len: usize,
}

/// The array argument as Envoy takes it: null when empty.
fn buffers_arg(values: &mut LabelValues) -> (*mut sys::ModuleBuffer, usize) {
    if values.len == 0 {
        (std::ptr::null_mut(), 0)
    } else {
        (values.buffers.as_mut_ptr(), values.len)
    }
}

#[cfg(test)]
mod tests;
