//! `tether check-config`: a plugin configuration through `tether::plugin::start`, the start
//! both builds run when Envoy hands them their configuration, so what it refuses here Envoy
//! refuses too, with the same line.

use crate::input;
use log::{Level, LevelFilter, Log, Metadata, Record};
use serde_json::Value;
use std::cell::RefCell;
use std::path::Path;
use tether::config::{Config, Kind, LearnSource, Settings};
use tether::entropy::SystemEntropy;
use tether::plugin;
use tether::secret::PROCESS_SECRET_KEY;
use tether::table::{Store, StoreError};

/// One plugin configuration found in a file: where it was, and the JSON the module would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub label: String,
    pub json: Vec<u8>,
}

pub fn run(path: &Path) -> bool {
    let name = path.display().to_string();
    let found = match input::read(path).and_then(|bytes| plugin_configs(&bytes, &name)) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("tether check-config: {e}");
            return false;
        }
    };
    let mut ok = true;
    for f in &found {
        match check(&f.json) {
            Ok(config) => {
                println!("{}: ok", f.label);
                for line in describe(&config) {
                    println!("  {line}");
                }
            }
            Err(lines) => {
                ok = false;
                println!("{}: refused", f.label);
                for line in lines {
                    eprintln!("{line}");
                }
            }
        }
    }
    ok
}

/// The plugin configurations in a file: the file itself when it is plugin JSON (handed over
/// byte for byte, so even a JSON syntax error reads as in Envoy), else every WasmPlugin's
/// `spec.pluginConfig`, every EnvoyExtensionPolicy's `spec.wasm[].config`, and every document
/// that is no Kubernetes resource (the fields themselves, in YAML).
pub fn plugin_configs(bytes: &[u8], name: &str) -> Result<Vec<Found>, String> {
    if input::looks_like_json(bytes) {
        let manifest = serde_json::from_slice::<Value>(bytes)
            .ok()
            .filter(|v| v.get("kind").is_some() && v.get("apiVersion").is_some());
        let Some(manifest) = manifest else {
            return Ok(vec![Found {
                label: name.to_string(),
                json: bytes.to_vec(),
            }]);
        };
        return from_documents(&[manifest], name);
    }
    from_documents(&input::documents(bytes)?, name)
}

fn from_documents(documents: &[Value], name: &str) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let several = documents.len() > 1;
    for (i, doc) in documents.iter().enumerate() {
        let at = if several {
            format!("{name} (document {})", i + 1)
        } else {
            name.to_string()
        };
        let resource = doc.get("metadata").and_then(|m| m.get("name"));
        let named = |what: &str| match resource.and_then(Value::as_str) {
            Some(n) => format!("{at}: {what} {n}"),
            None => format!("{at}: {what}"),
        };
        let spec = doc.get("spec");
        match doc.get("kind").and_then(Value::as_str) {
            Some("WasmPlugin") => found.push(found_at(
                format!("{}, spec.pluginConfig", named("WasmPlugin")),
                spec.and_then(|s| s.get("pluginConfig")),
            )?),
            Some("EnvoyExtensionPolicy") => {
                let wasm = spec.and_then(|s| s.get("wasm")).and_then(Value::as_array);
                for (j, module) in wasm.into_iter().flatten().enumerate() {
                    found.push(found_at(
                        format!("{}, spec.wasm[{j}].config", named("EnvoyExtensionPolicy")),
                        module.get("config"),
                    )?);
                }
            }
            Some(_) => {}
            None if doc.get("static_resources").is_some() => {
                return Err(format!(
                    "{at} is an Envoy bootstrap: tether check-envoy checks it, and the plugin \
                     configuration of each of its tether filters"
                ))
            }
            None => found.push(found_at(at, Some(doc))?),
        }
    }
    if found.is_empty() {
        return Err(format!(
            "no plugin configuration in {name} (plugin JSON or YAML, a WasmPlugin's \
             spec.pluginConfig, or an EnvoyExtensionPolicy's spec.wasm[].config)"
        ));
    }
    Ok(found)
}

/// An absent configuration is what the module gets then: nothing, every default.
fn found_at(label: String, value: Option<&Value>) -> Result<Found, String> {
    let json = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::to_vec(v).map_err(|e| format!("{label}: {e}"))?,
    };
    Ok(Found { label, json })
}

/// The configuration as `plugin::start` compiles it, or the lines it logged refusing it.
pub fn check(json: &[u8]) -> Result<Config, Vec<String>> {
    install_logger();
    CAPTURED.with(|c| c.borrow_mut().clear());
    let started = plugin::start(
        json,
        &SecretOnly::default(),
        &mut SystemEntropy,
        plugin::Secrets::Unread,
    );
    let lines = CAPTURED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    match started {
        Some(started) => Ok(started.config),
        None if lines.is_empty() => Err(vec![
            "tether: the configuration was refused without a reason".to_string(),
        ]),
        None => Err(lines),
    }
}

thread_local! {
    /// Warnings and errors the core logged on this thread (tests check in parallel threads).
    static CAPTURED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Keeps what the core logs at warning level and above, as the lines Envoy would show.
struct Capture;

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= Level::Warn
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            CAPTURED.with(|c| c.borrow_mut().push(record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

fn install_logger() {
    // Only the first call installs it; the others find it there.
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(LevelFilter::Warn);
    }
}

/// A store for start's sake: it keeps the per-Envoy secret and drops the binding tables'
/// buckets, so a table of ten million sessions costs no memory to check.
#[derive(Default)]
struct SecretOnly {
    secret: RefCell<Option<Vec<u8>>>,
}

impl Store for SecretOnly {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let value = (key == PROCESS_SECRET_KEY)
            .then(|| self.secret.borrow().clone())
            .flatten();
        let cas = value.as_ref().map(|_| 1);
        Ok((value, cas))
    }

    fn set(&self, key: &str, value: &[u8], _cas: Option<u32>) -> Result<(), StoreError> {
        if key == PROCESS_SECRET_KEY {
            *self.secret.borrow_mut() = Some(value.to_vec());
        }
        Ok(())
    }
}

/// What a compiled configuration does, a line per policy.
pub fn describe(config: &Config) -> Vec<String> {
    let mut lines = vec![format!("top level: {}", policy(&config.default))];
    for (name, settings) in &config.routes {
        lines.push(match settings {
            Some(s) => format!("routes.{name}: {}", policy(s)),
            None => format!("routes.{name}: disabled"),
        });
    }
    lines
}

fn policy(s: &Settings) -> String {
    let name = &s.session_name;
    let mut parts = vec![match &s.kind {
        Kind::Cookie(_) => format!("cookie sessions in the cookie {name:?}"),
        Kind::Header { header } => format!("header sessions in the header {header:?}"),
        Kind::Learn {
            source,
            max_sessions,
        } => match source {
            LearnSource::Cookie { .. } => format!(
                "learns the application's cookie {name:?} (companion cookie \"tether-{name}\"), \
                 table of {max_sessions}"
            ),
            LearnSource::Header { header } => {
                format!("learns the request header {header:?}, table of {max_sessions}")
            }
            LearnSource::Query => {
                format!("learns the query parameter {name:?}, table of {max_sessions}")
            }
            LearnSource::ResponseHeader {
                header,
                request_header,
                envelope,
            } => format!(
                "learns the response header {header:?} (sent back in {request_header:?}), {}",
                if *envelope {
                    "in sealed envelopes".to_string()
                } else {
                    format!("table of {max_sessions}")
                }
            ),
        },
        Kind::SourceIp {
            trusted_hops,
            max_sessions,
        } => format!("source_ip sessions (trusted_hops {trusted_hops}), table of {max_sessions}"),
    }];
    if let Some(ms) = s.lifetimes.idle_ms {
        parts.push(format!("idle_timeout {}", duration(ms)));
    }
    if let Some(ms) = s.lifetimes.absolute_ms {
        parts.push(format!("absolute_timeout {}", duration(ms)));
    }
    parts.push(format!("routing header {}", s.routing.host_header));
    if let Some(h) = &s.routing.cluster_header {
        parts.push(format!("cluster header {h}"));
    }
    parts.push(match s.routing.strict {
        Some(strict) => format!(
            "strict ({}, Retry-After {} s)",
            strict.status, strict.retry_after_s
        ),
        None => "rebalance".to_string(),
    });
    parts.push(match (&s.keys_secret, s.keys.len()) {
        (Some(secret), _) => match &secret.config_source {
            None => format!("the keys of Envoy's secret \"{}\"", secret.name),
            Some(_) => format!("the keys of Envoy's secret \"{}\" (by SDS)", secret.name),
        },
        (None, 0) => "a random secret per Envoy process (no keys)".to_string(),
        (None, 1) => "1 key".to_string(),
        (None, n) => format!("{n} keys"),
    });
    parts.join(", ")
}

/// Milliseconds in the configuration's own notation (`1h30m`, `500ms`).
pub fn duration(ms: u64) -> String {
    let mut out = String::new();
    let mut left = ms;
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if left >= size {
            out.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_configuration_is_described() {
        let config = check(
            br#"{"idle_timeout": "30m", "absolute_timeout": "24h",
                 "routes": {"admin": {"disabled": true},
                            "mcp": {"type": "learn", "learn_from": "response_header",
                                    "session_name": "mcp-session-id", "on_unavailable": "strict"}}}"#,
        )
        .unwrap();
        let lines = describe(&config);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("top level: cookie sessions in the cookie \"tether\""));
        assert!(lines[0].contains("idle_timeout 30m, absolute_timeout 24h"));
        assert!(lines[0].ends_with("rebalance, a random secret per Envoy process (no keys)"));
        assert_eq!(lines[1], "routes.admin: disabled");
        assert!(lines[2].contains("in sealed envelopes"), "{}", lines[2]);
        assert!(lines[2].contains("strict (503, Retry-After 5 s)"));
    }

    #[test]
    fn a_refusal_is_the_line_the_module_logs() {
        let lines = check(br#"{"cookie": {"same_site": "none"}}"#).unwrap_err();
        assert_eq!(
            lines,
            vec![
                "tether: invalid plugin configuration: cookie.same_site: \"none\" needs \
                  cookie.secure: true (browsers drop SameSite=None cookies without Secure)"
                    .to_string()
            ]
        );
        let lines = check(b"{\"type\": ").unwrap_err();
        assert_eq!(lines.len(), 1);
        assert!(lines[0]
            .starts_with("tether: invalid plugin configuration: configuration is not valid JSON"));
        let lines = check(br#"{"routes": {"a": {"trusted_hops": 1}}}"#).unwrap_err();
        assert!(
            lines[0].contains("routes.a.trusted_hops: does not apply"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_largest_table_is_checked_without_filling_it() {
        assert!(check(br#"{"type": "source_ip", "max_sessions": 10000000}"#).is_ok());
    }

    #[test]
    fn manifests_give_their_plugin_configuration() {
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n\
            apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: t}\n\
            spec:\n  pluginConfig:\n    type: header\n    idle_timeout: 30m\n---\n\
            apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: EnvoyExtensionPolicy\n\
            spec:\n  wasm:\n  - name: a\n  - name: b\n    config: {type: learn}\n";
        let found = plugin_configs(yaml, "f.yaml").unwrap();
        let labels: Vec<&str> = found.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(
            labels,
            vec![
                "f.yaml (document 2): WasmPlugin t, spec.pluginConfig",
                "f.yaml (document 3): EnvoyExtensionPolicy, spec.wasm[0].config",
                "f.yaml (document 3): EnvoyExtensionPolicy, spec.wasm[1].config",
            ]
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&found[0].json).unwrap(),
            serde_json::json!({"type": "header", "idle_timeout": "30m"})
        );
        assert!(found[1].json.is_empty(), "no config: every default");
        assert!(plugin_configs(b"kind: Service\napiVersion: v1\n", "s.yaml").is_err());
        let bootstrap = plugin_configs(b"static_resources: {}\n", "envoy.yaml").unwrap_err();
        assert!(bootstrap.contains("tether check-envoy"), "{bootstrap}");
    }

    #[test]
    fn plugin_json_is_handed_over_as_it_is() {
        let text = b"  {\"type\": \"cookie\",}";
        assert_eq!(
            plugin_configs(text, "p.json").unwrap()[0].json,
            text.to_vec()
        );
        let yaml = plugin_configs(b"type: cookie\nidle_timeout: 1h30m\n", "p.yaml").unwrap();
        assert_eq!(yaml[0].label, "p.yaml");
        assert!(check(&yaml[0].json).is_ok());
    }

    #[test]
    fn durations_read_back_as_written() {
        assert_eq!(duration(5_400_000), "1h30m");
        assert_eq!(duration(500), "500ms");
        assert_eq!(duration(86_400_000), "24h");
    }
}
