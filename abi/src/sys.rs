//! The raw ABI: the C types, the callbacks tether imports from Envoy and the enum values it
//! passes, as Envoy 1.40 (ABI v0.2.0) defines them. Written from the ABI header's documented
//! interface; nothing here checks a signature, so each one is exercised by an end-to-end test
//! (tests/e2e/test_native.py), and the symbol test checks that every import exists in the binary.
//!
//! C enums are 4-byte integers in the x86_64 and aarch64 calling conventions; they are declared
//! as `u32` so a value Envoy returns that this file does not list is never undefined behaviour.

use std::ffi::{c_char, c_void};

/// Envoy's object for one filter configuration (`DynamicModuleHttpFilterConfig`).
pub type ConfigEnvoyPtr = *mut c_void;
/// Envoy's object for one stream's filter (`DynamicModuleHttpFilter`).
pub type FilterEnvoyPtr = *mut c_void;
/// The module's object for a configuration or a stream's filter, as Envoy holds it.
pub type ModulePtr = *const c_void;
/// Envoy's scheduler of a configuration's events (`DynamicModuleHttpFilterConfigScheduler`),
/// which the module owns.
pub type SchedulerPtr = *mut c_void;

/// Bytes Envoy owns; valid until the end of the hook, or until a setter changes their map.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// Bytes the module owns, read by Envoy during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// Null: for `set_header`, "remove the header".
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header Envoy owns (`get_headers` fills an array of these).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

impl EnvoyHttpHeader {
    pub const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// A header the module owns (`send_response`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub mod header_type {
    pub const REQUEST_HEADER: u32 = 0;
    pub const REQUEST_TRAILER: u32 = 1;
    pub const RESPONSE_HEADER: u32 = 2;
    pub const RESPONSE_TRAILER: u32 = 3;
}

/// `envoy_dynamic_module_type_log_level` (Envoy's spdlog levels).
pub mod log_level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
    pub const CRITICAL: u32 = 5;
}

/// `envoy_dynamic_module_type_attribute_id`: the ids of the attributes tether reads (their
/// place in the header's list, which only ever grows at its end).
pub mod attribute_id {
    pub const RESPONSE_CODE_DETAILS: u32 = 16;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const UPSTREAM_ADDRESS: u32 = 41;
    pub const XDS_CLUSTER_NAME: u32 = 57;
    pub const XDS_ROUTE_NAME: u32 = 61;
}

/// `envoy_dynamic_module_type_metrics_result`: 0 is success.
pub const METRICS_SUCCESS: u32 = 0;

/// The statuses the phase hooks return (`..._headers_status`, `..._body_status`,
/// `..._trailers_status`): 0 is Continue in each; 1 is StopIteration for headers.
pub const STATUS_CONTINUE: u32 = 0;
pub const STATUS_STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_on_http_filter_local_reply_status_Continue`.
pub const LOCAL_REPLY_CONTINUE: u32 = 0;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_cluster_name(
        filter: FilterEnvoyPtr,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter: FilterEnvoyPtr,
        host: ModuleBuffer,
        strict: bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    // The same three on the configuration, for a hook that has no stream (the configuration's
    // scheduled event, on the main thread).
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    /// A scheduler for the configuration: each commit makes Envoy call
    /// `envoy_dynamic_module_on_http_filter_config_scheduled` on its main thread, unless the
    /// configuration is gone by then. Commit posts to the main dispatcher, which any thread
    /// may do; the module deletes the scheduler.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: SchedulerPtr,
    );

    /// Subscribes the configuration to Envoy's generic secret `name`: from the bootstrap's
    /// `static_resources.secrets` when `config_source` is empty, else by SDS from that
    /// `ConfigSource` (JSON). Only while `envoy_dynamic_module_on_http_filter_config_new` runs.
    /// Returns the subscription's id, 0 when Envoy refused it.
    pub fn envoy_dynamic_module_callback_http_filter_config_generic_secret_subscribe(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        config_source: ModuleBuffer,
    ) -> u64;
    /// The secret's current value on this thread (empty while SDS has not delivered it);
    /// false for an unknown id. The bytes are valid for this hook.
    pub fn envoy_dynamic_module_callback_http_filter_config_get_generic_secret(
        config: ConfigEnvoyPtr,
        id: u64,
        result: *mut EnvoyBuffer,
    ) -> bool;
    /// The same from a stream's filter, on its worker: the value as rotated there.
    pub fn envoy_dynamic_module_callback_http_filter_get_generic_secret(
        filter: FilterEnvoyPtr,
        id: u64,
        result: *mut EnvoyBuffer,
    ) -> bool;
}
