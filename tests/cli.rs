//! The `tether` command as an operator runs it: against every shipped Envoy config and plugin
//! manifest, and against each requirement of docs/envoy-setup.md broken in turn, starting from
//! a shipped config that passes.

// Native only: the command does not exist for wasm32.
#![cfg(not(target_arch = "wasm32"))]
// Test code: a failed expectation should stop the test loudly.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tether::entropy::SystemEntropy;
use tether::pin::Pin;
use tether::seal::{Carrier, Sealer};

const HCM: &str = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
const CLUSTER: &str = "/static_resources/clusters/0";

fn tether(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the tether binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn shipped_envoy_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the shipped configs: {files:?}");
    files
}

fn yaml(path: &str) -> Value {
    let bytes = std::fs::read(repo(path)).unwrap();
    let mut v =
        serde_norway::Value::deserialize(serde_norway::Deserializer::from_slice(&bytes)).unwrap();
    v.apply_merge().unwrap();
    serde_json::to_value(v).unwrap()
}

/// Writes `v` where the test binary may keep files, and returns the path.
fn written(name: &str, v: &Value) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    path
}

fn findings(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("static_resources"))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_shipped_envoy_config_has_the_set_up_tether_needs() {
    for file in shipped_envoy_configs() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let out = tether(&["check-envoy", file.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(": ok: 1 listener(s)"), "{name}: {stdout}");
        assert!(findings(&out).is_empty());
    }
}

#[test]
fn every_shipped_plugin_configuration_is_accepted() {
    for file in [
        "deploy/istio/wasmplugin.yaml",
        "deploy/envoy-gateway/envoyextensionpolicy.yaml",
    ] {
        let out = tether(&["check-config", file]);
        assert!(out.status.success(), "{file}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(": ok\n"), "{stdout}");
        assert!(stdout.contains("top level: cookie sessions in the cookie \"tether\""));
        assert!(stdout.contains("idle_timeout 30m, absolute_timeout 24h"));
    }
    // The JSON inside every shipped Envoy config, as a file of its own.
    for file in shipped_envoy_configs() {
        let v = yaml(file.strip_prefix(repo("")).unwrap().to_str().unwrap());
        let filter = v
            .pointer(&format!("{HCM}/http_filters/0/typed_config"))
            .unwrap();
        let config = filter
            .pointer("/config/configuration/value")
            .or_else(|| filter.pointer("/filter_config/value"))
            .and_then(Value::as_str)
            .unwrap();
        let name = format!(
            "plugin-{}.json",
            file.file_stem().unwrap().to_string_lossy()
        );
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, config).unwrap();
        let out = tether(&["check-config", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", file.display(), text(&out));
    }
}

#[test]
fn a_refused_plugin_configuration_gets_the_modules_line_and_status_1() {
    let mut manifest = yaml("deploy/istio/wasmplugin.yaml");
    manifest["spec"]["pluginConfig"]["cookie"]["same_site"] = json!("none");
    let path = written("refused-wasmplugin.json", &manifest);
    let out = tether(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("WasmPlugin tether, spec.pluginConfig: refused"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tether: invalid plugin configuration: cookie.same_site: \"none\" needs cookie.secure: \
         true (browsers drop SameSite=None cookies without Secure)\n"
    );
    let out = tether(&["check-config", "no/such/file.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot read no/such/file.json"));
}

/// One requirement broken: the shipped config it starts from, what is changed, and the start
/// of the line that must report it.
struct Broken {
    base: &'static str,
    what: &'static str,
    change: fn(&mut Value),
    expect: &'static str,
}

fn at<'a>(v: &'a mut Value, pointer: &str) -> &'a mut Value {
    v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}"))
}

fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match at(v, parent) {
        Value::Object(o) => {
            assert!(o.remove(key).is_some(), "no {pointer}");
        }
        Value::Array(a) => {
            a.remove(key.parse().unwrap());
        }
        _ => panic!("{parent} holds nothing"),
    }
}

fn insert(v: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let previous = at(v, parent)
        .as_object_mut()
        .unwrap()
        .insert(key.into(), value);
    assert!(previous.is_none(), "{pointer} was there already");
}

/// The plugin JSON of the first filter, Wasm (`config.configuration`) or native
/// (`filter_config`).
fn set_plugin(v: &mut Value, json: &str) {
    let filter = at(v, &format!("{HCM}/http_filters/0/typed_config"));
    let value = match filter.pointer_mut("/config/configuration/value") {
        Some(value) => value,
        None => at(filter, "/filter_config/value"),
    };
    *value = Value::String(json.to_string());
}

const ROUTE: &str = "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0] (app).routes[1] (app).route";

fn broken() -> Vec<Broken> {
    vec![
        Broken {
            base: "envoy/envoy.yaml",
            what: "the filter after the router",
            change: |v| at(v, &format!("{HCM}/http_filters")).as_array_mut().unwrap().swap(0, 1),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[1]: tether comes after the router",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no router",
            change: |v| remove(v, &format!("{HCM}/http_filters/1")),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters: no router filter",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no tether filter at all",
            change: |v| remove(v, &format!("{HCM}/http_filters/0")),
            expect: "static_resources.listeners: no HTTP connection manager has tether's filter",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no vm_id",
            change: |v| remove(v, &format!("{HCM}/http_filters/0/typed_config/config/vm_config/vm_id")),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.vm_config: no vm_id",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "two listeners with two vm_ids",
            change: |v| {
                let mut second = at(v, "/static_resources/listeners/0").clone();
                second["name"] = json!("second");
                *at(&mut second, "/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config/vm_config/vm_id") = json!("other");
                at(v, "/static_resources/listeners").as_array_mut().unwrap().push(second);
            },
            expect: "static_resources.listeners[1] (second).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.vm_config.vm_id: \"other\" differs from \"tether\"",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "a plugin configuration the module refuses",
            change: |v| set_plugin(v, r#"{"type": "sticky"}"#),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration: tether: invalid plugin configuration: type: unknown variant `sticky`",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no override_host policy",
            change: |v| remove(v, &format!("{CLUSTER}/load_balancing_policy")),
            expect: "static_resources.clusters[0] (app): no override_host load-balancing policy",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "override_host reading another header",
            change: |v| *at(v, &format!("{CLUSTER}/load_balancing_policy/policies/0/typed_extension_config/typed_config/override_host_sources/0/header")) = json!("x-other"),
            expect: "static_resources.clusters[0] (app).load_balancing_policy.policies[0].typed_extension_config.typed_config.override_host_sources: reads x-other, but tether sets x-tether-host",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "tether setting another header than the cluster reads",
            change: |v| set_plugin(v, r#"{"upstream": {"host_header": "x-pin"}}"#),
            expect: "static_resources.clusters[0] (app).load_balancing_policy.policies[0].typed_extension_config.typed_config.override_host_sources: reads x-tether-host, but tether sets x-pin",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no fallback policy",
            change: |v| remove(v, &format!("{CLUSTER}/load_balancing_policy/policies/0/typed_extension_config/typed_config/fallback_policy")),
            expect: "static_resources.clusters[0] (app).load_balancing_policy.policies[0].typed_extension_config.typed_config: no fallback_policy",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no retry policy",
            change: |v| remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy")),
            expect: "…route: no retry policy",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no previous_hosts predicate",
            change: |v| remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/retry_host_predicate")),
            expect: "…route.retry_policy: no previous_hosts host predicate",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no connect-failure retries",
            change: |v| *at(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/retry_on")) = json!("reset,refused-stream"),
            expect: "…route.retry_policy.retry_on: does not retry connect-failure",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no reset retries",
            change: |v| *at(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/retry_on")) = json!("connect-failure"),
            expect: "…route.retry_policy.retry_on: retries no reset",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no retries",
            change: |v| *at(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/num_retries")) = json!(0),
            expect: "…route.retry_policy.num_retries: is 0",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "one host selection per retry",
            change: |v| remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/host_selection_retry_max_attempts")),
            expect: "…route.retry_policy: no host_selection_retry_max_attempts",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "a per-try timeout",
            change: |v| insert(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy/per_try_timeout"), json!("2s")),
            expect: "…route.retry_policy.per_try_timeout: a slow request is retried",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no retry budget",
            change: |v| remove(v, &format!("{CLUSTER}/circuit_breakers")),
            expect: "static_resources.clusters[0] (app): no retry budget",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "Envoy's hour-long upstream idle timeout",
            change: |v| remove(v, &format!("{CLUSTER}/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/common_http_protocol_options")),
            expect: "static_resources.clusters[0] (app): no upstream idle_timeout",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the upstream idle timeout turned off",
            change: |v| *at(v, &format!("{CLUSTER}/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/common_http_protocol_options/idle_timeout")) = json!("0s"),
            expect: "static_resources.clusters[0] (app): no upstream idle_timeout",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no active health checks",
            change: |v| remove(v, &format!("{CLUSTER}/health_checks")),
            expect: "static_resources.clusters[0] (app): no active health checks",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "health checks without no_traffic_interval",
            change: |v| remove(v, &format!("{CLUSTER}/health_checks/0/no_traffic_interval")),
            expect: "static_resources.clusters[0] (app).health_checks[0]: no no_traffic_interval",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no outlier detection",
            change: |v| remove(v, &format!("{CLUSTER}/outlier_detection")),
            expect: "static_resources.clusters[0] (app): no outlier detection",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build without outlier detection",
            change: |v| remove(v, &format!("{CLUSTER}/outlier_detection")),
            expect: "static_resources.clusters[0] (app): no outlier detection",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no upstream strip of the routing header",
            change: |v| remove(v, &format!("{CLUSTER}/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters/0")),
            expect: "static_resources.clusters[0] (app): nothing removes x-tether-host upstream",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "the routing header removed before load balancing",
            change: |v| insert(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/1/request_headers_to_remove"), json!(["x-tether-host"])),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0] (app).routes[1] (app).request_headers_to_remove: removes x-tether-host before load balancing",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "source_ip without use_remote_address",
            change: |v| {
                set_plugin(v, r#"{"type": "source_ip"}"#);
                remove(v, &format!("{HCM}/use_remote_address"));
            },
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config: source_ip sessions, but use_remote_address is not true",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "no WebSocket upgrades",
            change: |v| remove(v, &format!("{HCM}/upgrade_configs")),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config: no WebSocket upgrades",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "strict sessions without the subset route",
            change: |v| {
                set_plugin(v, r#"{"on_unavailable": "strict"}"#);
                remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/0"));
            },
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0] (app).routes[0] (app): on_unavailable is strict, but no route before it matches x-tether-strict",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "a strict route that asks for no subset",
            change: |v| {
                set_plugin(v, r#"{"on_unavailable": "strict"}"#);
                remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/0/route/metadata_match"));
            },
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0] (app).routes[0] (app-strict).route: matches x-tether-strict but asks for no subset",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "strict sessions without the NO_FALLBACK subset selector",
            change: |v| {
                set_plugin(v, r#"{"on_unavailable": "strict"}"#);
                let subset = format!("{CLUSTER}/load_balancing_policy/policies/0/typed_extension_config/typed_config/fallback_policy/policies/0/typed_extension_config/typed_config");
                *at(v, &format!("{subset}/subset_selectors/0/fallback_policy")) = json!("ANY_ENDPOINT");
            },
            expect: "static_resources.clusters[0] (app).load_balancing_policy.policies[0].typed_extension_config.typed_config.fallback_policy: no subset selector for tether_strict with NO_FALLBACK",
        },
        Broken {
            base: "envoy/canary.yaml",
            what: "the cluster header reaching the backends",
            change: |v| remove(v, &format!("{CLUSTER}/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/http_filters/0/typed_config/mutations/request_mutations/1")),
            expect: "static_resources.clusters[0] (app-stable): nothing removes x-tether-cluster upstream",
        },
        Broken {
            base: "envoy/canary.yaml",
            what: "a weighted cluster without a retry budget",
            change: |v| remove(v, "/static_resources/clusters/1/circuit_breakers"),
            expect: "static_resources.clusters[1] (app-canary): no retry budget",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build's override-host statuses",
            change: |v| remove(v, &format!("{CLUSTER}/common_lb_config")),
            expect: "static_resources.clusters[0] (app): the override-host call skips endpoints that are UNHEALTHY, DRAINING, TIMEOUT",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build without a retry policy",
            change: |v| remove(v, &format!("{HCM}/route_config/virtual_hosts/0/routes/0/route/retry_policy")),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0] (app).routes[0] (app).route: no retry policy",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build's keys from a secret the bootstrap does not hold",
            change: |v| set_plugin(v, r#"{"keys_secret": "tether-keys"}"#),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.filter_config: keys_secret names the secret tether-keys, which static_resources.secrets does not hold",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build's keys by SDS with no node",
            change: |v| set_plugin(v, r#"{"keys_secret": {"name": "k", "path": "/etc/k.yaml"}}"#),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.filter_config: keys_secret has the secret k served by SDS, but the bootstrap has no node.id",
        },
        Broken {
            base: "envoy/envoy.yaml",
            what: "the Wasm build's keys from a secret",
            change: |v| set_plugin(v, r#"{"routes": {"app": {"keys_secret": "k"}}}"#),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration: routes.app.keys_secret: Envoy's secrets reach only the native build",
        },
        Broken {
            base: "envoy/native.yaml",
            what: "the native build's filter after the router",
            change: |v| at(v, &format!("{HCM}/http_filters")).as_array_mut().unwrap().swap(0, 1),
            expect: "static_resources.listeners[0] (main).filter_chains[0].filters[0].typed_config.http_filters[1]: tether comes after the router",
        },
    ]
}

#[test]
fn each_requirement_broken_in_turn_is_reported() {
    for (i, case) in broken().iter().enumerate() {
        let mut config = yaml(case.base);
        (case.change)(&mut config);
        let path = written(&format!("broken-{i}.json"), &config);
        let out = tether(&["check-envoy", path.to_str().unwrap()]);
        // `…route` stands for the path of envoy/envoy.yaml's `app` route.
        let expect = case.expect.replacen("…route", ROUTE, 1);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{} ({}): {}",
            case.what,
            case.base,
            text(&out)
        );
        assert!(
            findings(&out).iter().any(|l| l.starts_with(&expect)),
            "{} ({}): expected a line starting with\n  {expect}\ngot\n{}",
            case.what,
            case.base,
            text(&out)
        );
    }
}

/// `v` as Envoy's JSON names spell it (`typedConfig`), the way protobuf's JSON printer and
/// some generators write a bootstrap; the user's own keys (metadata, filter names) as they are.
fn json_names(v: &Value) -> Value {
    fn camel(key: &str) -> String {
        let mut out = String::new();
        let mut upper = false;
        for c in key.chars() {
            match c {
                '_' => upper = true,
                c if upper => {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                }
                c => out.push(c),
            }
        }
        out
    }
    match v {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| {
                    let value = match k.as_str() {
                        "filter_metadata" => v.clone(),
                        "typed_per_filter_config" | "typed_extension_protocol_options" => {
                            Value::Object(
                                v.as_object()
                                    .unwrap()
                                    .iter()
                                    .map(|(k, v)| (k.clone(), json_names(v)))
                                    .collect(),
                            )
                        }
                        _ => json_names(v),
                    };
                    (camel(k), value)
                })
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(json_names).collect()),
        other => other.clone(),
    }
}

/// The extension config at `pointer` carried in an `xds.type.v3.TypedStruct`, as Istio writes
/// filters.
fn in_typed_struct(v: &mut Value, pointer: &str) {
    let typed = at(v, pointer);
    let mut fields = typed.as_object().unwrap().clone();
    let url = fields.remove("@type").unwrap();
    *typed = json!({
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": url,
        "value": fields,
    });
}

#[test]
fn a_bootstrap_in_json_names_or_typed_structs_is_read_as_envoy_reads_it() {
    for file in shipped_envoy_configs() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let shipped = yaml(file.strip_prefix(repo("")).unwrap().to_str().unwrap());
        let plain = tether(&["check-envoy", file.to_str().unwrap()]);
        let ok_line = |out: &Output| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .split_once(": ok: ")
                .map(|(_, rest)| rest.to_string())
        };
        let expected = ok_line(&plain).expect("the shipped file passes");

        let mut wrapped = shipped.clone();
        in_typed_struct(&mut wrapped, &format!("{HCM}/http_filters/0/typed_config"));
        in_typed_struct(&mut wrapped, HCM);
        for (label, twin) in [
            ("json names", json_names(&shipped)),
            ("typed structs", wrapped.clone()),
            ("both", json_names(&wrapped)),
        ] {
            let path = written(&format!("spelled-{label}-{name}.json"), &twin);
            let out = tether(&["check-envoy", path.to_str().unwrap()]);
            assert!(out.status.success(), "{name} in {label}: {}", text(&out));
            assert_eq!(ok_line(&out), Some(expected.clone()), "{name} in {label}");
        }
    }
    // And a mistake is still found in that spelling.
    let mut broken = yaml("envoy/envoy.yaml");
    remove(
        &mut broken,
        &format!("{HCM}/route_config/virtual_hosts/0/routes/1/route/retry_policy"),
    );
    in_typed_struct(&mut broken, HCM);
    let path = written("spelled-broken.json", &json_names(&broken));
    let out = tether(&["check-envoy", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        findings(&out)
            .iter()
            .any(|l| l.starts_with(&format!("{ROUTE}: no retry policy"))),
        "{}",
        text(&out)
    );
}

#[test]
fn the_native_builds_keys_from_a_secret_the_bootstrap_holds_pass() {
    let mut v = yaml("envoy/native.yaml");
    set_plugin(&mut v, r#"{"keys_secret": "tether-keys"}"#);
    insert(
        &mut v,
        "/static_resources/secrets",
        json!([{"name": "tether-keys", "generic_secret": {"secret": {"inline_string": "k"}}}]),
    );
    let path = written("secret-static.json", &v);
    let out = tether(&["check-envoy", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut v = yaml("envoy/native.yaml");
    set_plugin(&mut v, r#"{"keys_secret": {"name": "k", "ads": true}}"#);
    insert(&mut v, "/node", json!({"id": "a", "cluster": "b"}));
    let path = written("secret-sds.json", &v);
    let out = tether(&["check-envoy", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_bootstrap_that_is_not_yaml_is_refused() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("not-yaml.yaml");
    std::fs::write(&path, "static_resources: [1\n").unwrap();
    let out = tether(&["check-envoy", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not valid YAML"), "{}", text(&out));
}

#[test]
fn a_fresh_key_opens_a_token_sealed_with_it() {
    let out = tether(&["keygen"]);
    assert!(out.status.success());
    let key_text = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let key = tether::encoding::base64_decode(key_text.as_bytes()).unwrap();
    let key: [u8; 32] = key.try_into().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let pin = Pin {
        endpoint: "10.0.0.7:8080".into(),
        cluster: None,
        created_ms: now,
        last_seen_ms: now,
    };
    let token = Sealer::new(&[key], Carrier::Cookie, "sid")
        .seal(&pin, b"", &mut SystemEntropy)
        .unwrap();
    let cookie = format!("sid={token}");
    let out = tether(&[
        "open",
        "--keys",
        &key_text,
        "--idle-timeout",
        "30m",
        &cookie,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("opens: cookie token of \"sid\", with key 1 of 1"));
    assert!(stdout.contains("endpoint: 10.0.0.7:8080"));
    assert!(stdout.contains(&format!("({now} ms since 1970)")));
    assert!(stdout.contains("state: live"));

    let other = String::from_utf8(tether(&["keygen"]).stdout).unwrap();
    assert_ne!(other.trim(), key_text, "every key is fresh");
    let out = tether(&["open", "--keys", other.trim(), &cookie]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no key opens it"), "{}", text(&out));
    let out = tether(&["open", "--keys", &key_text, "sid=%%%"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not a tether token: not unpadded base64url"));
}

#[test]
fn every_subcommand_has_help_and_the_command_a_version() {
    for sub in ["check-config", "check-envoy", "keygen", "open"] {
        let out = tether(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: tether"),
            "{sub}"
        );
    }
    let out = tether(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tether {}", env!("CARGO_PKG_VERSION"))
    );
    let out = tether(&["check-envoy"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(text(&out).contains("FILE"));
}
