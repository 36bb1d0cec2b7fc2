//! `tether check-envoy`: what an Envoy bootstrap lacks of the set-up tether needs
//! (docs/envoy-setup.md), per listener, route and cluster tether serves.
//!
//! The bootstrap is read as JSON values, not as Envoy's types: only the fields the set-up
//! depends on are looked at, so a bootstrap with fields this command does not know is still
//! checked. Envoy itself (`envoy --mode validate`) says whether the rest is valid.

use crate::{check_config, input};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use tether::config::{Config, KeysSecret, SessionType, Settings, STRICT_HEADER};

/// Something missing or inconsistent: where in the bootstrap, what, and what to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path, self.problem, self.fix)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// What could not be checked from the file alone (routes from RDS, clusters from CDS).
    pub notes: Vec<String>,
    pub listeners: usize,
    pub routes: usize,
    pub clusters: usize,
    /// The Envoy secrets the native build's `keys_secret` names, with the filter's path.
    secrets: Vec<(String, KeysSecret)>,
}

impl Report {
    fn find(&mut self, path: &str, problem: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding {
            path: path.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }
}

pub fn run(path: &Path) -> bool {
    let name = path.display().to_string();
    let documents = match input::read(path).and_then(|b| input::documents(&b)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tether check-envoy: {name}: {e}");
            return false;
        }
    };
    let [bootstrap] = documents.as_slice() else {
        eprintln!(
            "tether check-envoy: {name}: {} documents; an Envoy bootstrap is one",
            documents.len()
        );
        return false;
    };
    let report = check(bootstrap);
    for note in &report.notes {
        println!("note: {note}");
    }
    for finding in &report.findings {
        println!("{finding}");
    }
    if report.findings.is_empty() {
        println!(
            "{name}: ok: {} listener(s), {} route(s) and {} cluster(s) served by tether have \
             the set-up it needs",
            report.listeners, report.routes, report.clusters
        );
        true
    } else {
        println!("{name}: {} finding(s)", report.findings.len());
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Wasm,
    Native,
}

/// A tether filter in a connection manager's `http_filters`.
struct TetherFilter<'a> {
    index: usize,
    build: Build,
    path: String,
    /// The Wasm filter's `config` (where `vm_config` is).
    wasm_config: Option<&'a Value>,
    config: Result<Config, Vec<String>>,
}

/// What the routes tether serves ask of a cluster.
#[derive(Default)]
struct Needs {
    /// The first route that sends traffic there.
    used_by: String,
    /// Headers the cluster's `override_host` policy must read (the Wasm build's
    /// `upstream.host_header`).
    host_headers: BTreeSet<String>,
    /// Headers its upstream filters must remove: the host headers, and the cluster headers
    /// routes match (`upstream.cluster_header`).
    stripped: BTreeSet<String>,
    /// `envoy.lb` metadata keys of strict routes, with the route's path: the fallback policy
    /// needs a subset selector for them with NO_FALLBACK.
    strict_keys: BTreeMap<String, String>,
    wasm: bool,
    native: bool,
}

pub fn check(bootstrap: &Value) -> Report {
    let bootstrap = &proto_form(bootstrap);
    let mut report = Report::default();
    let resources = bootstrap.get("static_resources");
    let mut needs: BTreeMap<String, Needs> = BTreeMap::new();
    let mut vm_ids: Vec<(String, Option<String>)> = Vec::new();
    for (li, listener) in items(resources, "listeners") {
        let lpath = named(&format!("static_resources.listeners[{li}]"), listener);
        let chains = items(Some(listener), "filter_chains")
            .map(|(ci, c)| (format!("{lpath}.filter_chains[{ci}]"), c))
            .chain(
                listener
                    .get("default_filter_chain")
                    .map(|c| (format!("{lpath}.default_filter_chain"), c)),
            );
        let mut served = false;
        for (cpath, chain) in chains {
            for (fi, filter) in items(Some(chain), "filters") {
                let Some(hcm) = filter
                    .get("typed_config")
                    .filter(|t| type_is(t, "http_connection_manager.v3.HttpConnectionManager"))
                else {
                    continue;
                };
                let hpath = format!("{cpath}.filters[{fi}].typed_config");
                served |= check_hcm(&hpath, hcm, &mut report, &mut needs, &mut vm_ids);
            }
        }
        if served {
            report.listeners += 1;
        }
    }
    if report.listeners == 0 {
        report.find(
            "static_resources.listeners",
            "no HTTP connection manager has tether's filter",
            "add it to http_filters, before envoy.filters.http.router (docs/envoy-setup.md)",
        );
    }
    check_vm_ids(&vm_ids, &mut report);
    check_secrets(bootstrap, &mut report);
    let clusters: Vec<(usize, &Value)> = items(resources, "clusters").collect();
    for (name, need) in &needs {
        match clusters
            .iter()
            .find(|(_, c)| c.get("name").and_then(Value::as_str) == Some(name))
        {
            Some((ci, cluster)) => {
                let cpath = named(&format!("static_resources.clusters[{ci}]"), cluster);
                report.clusters += 1;
                check_cluster(&cpath, cluster, need, &mut report);
            }
            None => report.notes.push(format!(
                "cluster {name} (used by {}) is not in static_resources.clusters: not checked",
                need.used_by
            )),
        }
    }
    report
}

/// One connection manager; whether tether serves it.
fn check_hcm(
    hpath: &str,
    hcm: &Value,
    report: &mut Report,
    needs: &mut BTreeMap<String, Needs>,
    vm_ids: &mut Vec<(String, Option<String>)>,
) -> bool {
    let filters: Vec<(usize, &Value)> = items(Some(hcm), "http_filters").collect();
    let tethers: Vec<TetherFilter> = filters
        .iter()
        .filter_map(|(i, f)| tether_filter(&format!("{hpath}.http_filters[{i}]"), *i, f))
        .collect();
    let Some(first) = tethers.first() else {
        return false;
    };
    let router = filters.iter().find(|(_, f)| {
        str_at(f, "name") == Some("envoy.filters.http.router")
            || f.get("typed_config")
                .is_some_and(|t| type_is(t, "filters.http.router.v3.Router"))
    });
    for t in &tethers {
        match router {
            None => report.find(
                &format!("{hpath}.http_filters"),
                "no router filter",
                "add envoy.filters.http.router last, after tether",
            ),
            Some((ri, _)) if t.index > *ri => report.find(
                &t.path,
                "tether comes after the router, which ends the filter chain: it never runs",
                "move it before envoy.filters.http.router",
            ),
            Some(_) => {}
        }
        if t.build == Build::Wasm {
            let vm_id = t
                .wasm_config
                .and_then(|c| c.get("vm_config"))
                .and_then(|v| str_at(v, "vm_id"))
                .filter(|id| !id.is_empty());
            vm_ids.push((t.path.clone(), vm_id.map(str::to_string)));
        }
        if let Err(lines) = &t.config {
            for line in lines {
                report.find(
                    &config_path(t),
                    line.clone(),
                    "fix the plugin configuration (tether check-config shows the same line)",
                );
            }
        }
    }
    for t in &tethers {
        let Ok(config) = &t.config else {
            continue;
        };
        match (t.build, config.keys_secret_field()) {
            (Build::Wasm, Some(field)) => report.find(
                &config_path(t),
                format!(
                    "{field}: Envoy's secrets reach only the native build: the Wasm module \
                     refuses the configuration"
                ),
                "list the keys in keys, or load the native build (envoy/native.yaml)",
            ),
            (Build::Wasm, None) => {}
            (Build::Native, _) => {
                for (_, settings) in config.policies() {
                    if let Some(secret) = &settings.keys_secret {
                        report.secrets.push((config_path(t), secret.clone()));
                    }
                }
            }
        }
    }
    let Ok(config) = &first.config else {
        report.notes.push(format!(
            "{}: routes and clusters not checked: the plugin configuration is refused",
            first.path
        ));
        return true;
    };
    let build = first.build;
    if config
        .policies()
        .any(|(_, s)| s.session_type() == SessionType::SourceIp)
        && hcm.get("use_remote_address").and_then(Value::as_bool) != Some(true)
    {
        report.find(
            hpath,
            "source_ip sessions, but use_remote_address is not true: the client address is \
             then taken from X-Forwarded-For, which clients write",
            "set use_remote_address: true",
        );
    }
    let websocket = items(Some(hcm), "upgrade_configs").any(|(_, u)| {
        str_at(u, "upgrade_type").is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
            && u.get("enabled").and_then(Value::as_bool) != Some(false)
    });
    if !websocket {
        report.find(
            hpath,
            "no WebSocket upgrades: Envoy answers them with 403",
            "add upgrade_configs: [{upgrade_type: websocket}]",
        );
    }
    let Some(route_config) = hcm.get("route_config") else {
        if hcm.get("rds").is_some() {
            report
                .notes
                .push(format!("{hpath}: routes come from RDS: not checked"));
        } else {
            report.find(hpath, "no route_config", "add the routes tether serves");
        }
        return true;
    };
    let rcpath = format!("{hpath}.route_config");
    let filter_names: Vec<&str> = tethers
        .iter()
        .filter_map(|t| filters.iter().find(|(i, _)| *i == t.index))
        .filter_map(|(_, f)| str_at(f, "name"))
        .collect();
    let strips_early = |at: &str, v: &Value, s: &Settings, report: &mut Report| {
        if build != Build::Wasm {
            return;
        }
        for (_, h) in items(Some(v), "request_headers_to_remove") {
            let Some(h) = h.as_str().map(str::to_ascii_lowercase) else {
                continue;
            };
            if routing_headers(s).contains(&h) {
                report.find(
                    &format!("{at}.request_headers_to_remove"),
                    format!("removes {h} before load balancing, so no request is pinned"),
                    "remove it there; strip it in the cluster's upstream header_mutation filter",
                );
            }
        }
    };
    strips_early(&rcpath, route_config, &config.default, report);
    for (vi, vhost) in items(Some(route_config), "virtual_hosts") {
        let vpath = named(&format!("{rcpath}.virtual_hosts[{vi}]"), vhost);
        strips_early(&vpath, vhost, &config.default, report);
        // Earlier strict routes of this virtual host: their clusters and subset keys.
        let mut strict_routes: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        for (ri, route) in items(Some(vhost), "routes") {
            let rpath = named(&format!("{vpath}.routes[{ri}]"), route);
            let Some(action) = route.get("route") else {
                continue;
            };
            let disabled_here = filter_names.iter().any(|n| {
                route
                    .get("typed_per_filter_config")
                    .and_then(|c| c.get(*n))
                    .and_then(|c| c.get("disabled"))
                    .and_then(Value::as_bool)
                    == Some(true)
            });
            let Some(settings) = policy_for(config, str_at(route, "name")) else {
                continue;
            };
            if disabled_here {
                continue;
            }
            report.routes += 1;
            let apath = format!("{rpath}.route");
            let clusters = route_clusters(action);
            if action.get("cluster_header").is_some() {
                report.notes.push(format!(
                    "{apath}: the cluster comes from a request header: its clusters are not checked"
                ));
            }
            for c in &clusters {
                let need = needs.entry(c.clone()).or_default();
                if need.used_by.is_empty() {
                    need.used_by = rpath.clone();
                }
                match build {
                    Build::Wasm => {
                        need.wasm = true;
                        need.host_headers
                            .insert(settings.routing.host_header.clone());
                        need.stripped.extend(routing_headers(settings));
                    }
                    Build::Native => need.native = true,
                }
            }
            strips_early(&rpath, route, settings, report);
            if matches_strict_header(route) {
                let keys = strict_subset_keys(action);
                if keys.is_empty() && build == Build::Wasm {
                    report.find(
                        &apath,
                        "matches x-tether-strict but asks for no subset, so strict sessions \
                         fall back to any endpoint",
                        "add metadata_match.filter_metadata.envoy.lb: {tether_strict: pinned}",
                    );
                }
                strict_routes.push((rpath.clone(), clusters, keys));
                // tether sets x-envoy-max-retries: 0 on these: no retry policy to check.
                continue;
            }
            check_retries(&apath, action, vhost, &vpath, report);
            if settings.routing.strict.is_some() && build == Build::Wasm {
                let earlier = strict_routes.iter().find(|(_, cs, keys)| {
                    !keys.is_empty() && clusters.iter().all(|c| cs.contains(c))
                });
                match earlier {
                    Some((spath, _, keys)) => {
                        for c in &clusters {
                            let need = needs.entry(c.clone()).or_default();
                            for k in keys {
                                need.strict_keys.insert(k.clone(), spath.clone());
                            }
                        }
                    }
                    None => report.find(
                        &rpath,
                        "on_unavailable is strict, but no route before it matches x-tether-strict \
                         and asks for a subset no endpoint is in: a strict session whose endpoint \
                         left the cluster is run on another endpoint",
                        "add before it a route to the same cluster matching the header \
                         x-tether-strict (present_match: true), with metadata_match.filter_metadata.\
                         envoy.lb: {tether_strict: pinned} and timeout: 0s (envoy/envoy.yaml's \
                         app-strict)",
                    ),
                }
            }
        }
    }
    true
}

fn tether_filter<'a>(path: &str, index: usize, filter: &'a Value) -> Option<TetherFilter<'a>> {
    let typed = filter.get("typed_config")?;
    let name = str_at(filter, "name").unwrap_or("");
    if type_is(typed, "filters.http.wasm.v3.Wasm") {
        let config = typed.get("config");
        let vm = config.and_then(|c| c.get("vm_config"));
        let code = vm.and_then(|v| v.get("code"));
        let file = code
            .and_then(|c| c.get("local"))
            .and_then(|l| str_at(l, "filename"))
            .or_else(|| {
                code.and_then(|c| c.get("remote"))
                    .and_then(|r| r.get("http_uri"))
                    .and_then(|u| str_at(u, "uri"))
            });
        let ours = name == "tether"
            || config.and_then(|c| str_at(c, "root_id")) == Some("tether")
            || config.and_then(|c| str_at(c, "name")) == Some("tether")
            || file.is_some_and(|f| f.contains("tether"));
        if !ours {
            return None;
        }
        let value = config.and_then(|c| c.get("configuration"));
        return Some(TetherFilter {
            index,
            build: Build::Wasm,
            path: path.to_string(),
            wasm_config: config,
            config: plugin_config(value),
        });
    }
    if type_is(typed, "dynamic_modules.v3.DynamicModuleFilter") {
        let module = typed
            .get("dynamic_module_config")
            .and_then(|m| str_at(m, "name"));
        if module != Some("tether") && str_at(typed, "filter_name") != Some("tether") {
            return None;
        }
        return Some(TetherFilter {
            index,
            build: Build::Native,
            path: path.to_string(),
            wasm_config: None,
            config: plugin_config(typed.get("filter_config")),
        });
    }
    None
}

fn config_path(t: &TetherFilter) -> String {
    match t.build {
        Build::Wasm => format!("{}.typed_config.config.configuration", t.path),
        Build::Native => format!("{}.typed_config.filter_config", t.path),
    }
}

/// The plugin configuration as the module receives it: a `google.protobuf.StringValue`'s
/// text, or nothing.
fn plugin_config(value: Option<&Value>) -> Result<Config, Vec<String>> {
    let text = match value {
        None | Some(Value::Null) => "",
        Some(v) => match v.get("value") {
            Some(Value::String(s)) => s.as_str(),
            None => "",
            Some(_) => {
                return Err(vec![
                    "the configuration is not a google.protobuf.StringValue".to_string(),
                ])
            }
        },
    };
    check_config::check(text.as_bytes())
}

fn policy_for<'a>(config: &'a Config, route: Option<&str>) -> Option<&'a Settings> {
    match route.and_then(|r| config.routes.iter().find(|(name, _)| name == r)) {
        Some((_, settings)) => settings.as_ref(),
        None => Some(&config.default),
    }
}

/// The headers tether sets for the cluster's policy and routes (the Wasm build).
fn routing_headers(s: &Settings) -> Vec<String> {
    std::iter::once(s.routing.host_header.clone())
        .chain(s.routing.cluster_header.clone())
        .collect()
}

fn route_clusters(action: &Value) -> Vec<String> {
    let single = str_at(action, "cluster").map(str::to_string);
    let weighted = action
        .get("weighted_clusters")
        .into_iter()
        .flat_map(|w| items(Some(w), "clusters"))
        .filter_map(|(_, c)| str_at(c, "name").map(str::to_string));
    single.into_iter().chain(weighted).collect()
}

fn matches_strict_header(route: &Value) -> bool {
    items(route.get("match"), "headers")
        .any(|(_, h)| str_at(h, "name").is_some_and(|n| n.eq_ignore_ascii_case(STRICT_HEADER)))
}

fn strict_subset_keys(action: &Value) -> Vec<String> {
    action
        .get("metadata_match")
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|f| f.get("envoy.lb"))
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The route's retry policy (its own, else its virtual host's): failover is a retry.
fn check_retries(apath: &str, action: &Value, vhost: &Value, vpath: &str, report: &mut Report) {
    let (ppath, policy) = match (action.get("retry_policy"), vhost.get("retry_policy")) {
        (Some(p), _) => (format!("{apath}.retry_policy"), p),
        (None, Some(p)) => (format!("{vpath}.retry_policy"), p),
        (None, None) => {
            report.find(
                apath,
                "no retry policy: a session pinned to a dead endpoint fails instead of moving",
                "add retry_policy: {retry_on: connect-failure,reset,refused-stream, num_retries: \
                 3, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}], \
                 host_selection_retry_max_attempts: 5}",
            );
            return;
        }
    };
    let retry_on: Vec<&str> = str_at(policy, "retry_on")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    if !retry_on.contains(&"connect-failure") {
        report.find(
            &format!("{ppath}.retry_on"),
            "does not retry connect-failure: a session pinned to a dead endpoint fails",
            "add connect-failure",
        );
    }
    if !retry_on.contains(&"reset") && !retry_on.contains(&"reset-before-request") {
        report.find(
            &format!("{ppath}.retry_on"),
            "retries no reset: a request to an endpoint that closes the connection fails",
            "add reset (or reset-before-request where a request must not run twice)",
        );
    }
    if policy.get("num_retries").and_then(Value::as_u64) == Some(0) {
        report.find(
            &format!("{ppath}.num_retries"),
            "is 0: nothing is retried",
            "set num_retries: 3",
        );
    }
    let previous_hosts = items(Some(policy), "retry_host_predicate").any(|(_, p)| {
        str_at(p, "name") == Some("envoy.retry_host_predicates.previous_hosts")
            || p.get("typed_config")
                .is_some_and(|t| type_is(t, "PreviousHostsPredicate"))
    });
    if !previous_hosts {
        report.find(
            &ppath,
            "no previous_hosts host predicate: the retry may go to the same dead endpoint",
            "add retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}]",
        );
    }
    let attempts = policy
        .get("host_selection_retry_max_attempts")
        .and_then(value_u64);
    if attempts.is_none_or(|a| a < 2) {
        let what = match attempts {
            None => "no host_selection_retry_max_attempts (Envoy selects again once)".to_string(),
            Some(a) => format!("host_selection_retry_max_attempts is {a}"),
        };
        report.find(
            &ppath,
            format!(
                "{what}: the retry's host selection may settle on the pinned dead endpoint again"
            ),
            "set host_selection_retry_max_attempts: 5",
        );
    }
    if policy.get("per_try_timeout").is_some_and(|t| !is_zero(t)) {
        report.find(
            &format!("{ppath}.per_try_timeout"),
            "a slow request is retried on another endpoint, and its session moves off a live \
             endpoint",
            "remove per_try_timeout",
        );
    }
}

/// `keys_secret`: a static secret must be in the bootstrap as a generic secret; one served by
/// SDS needs the bootstrap's `node.id` and `node.cluster`, or Envoy refuses the subscription.
fn check_secrets(bootstrap: &Value, report: &mut Report) {
    let secrets: Vec<(String, KeysSecret)> = std::mem::take(&mut report.secrets);
    for (path, secret) in &secrets {
        match &secret.config_source {
            None => {
                let held = items(bootstrap.get("static_resources"), "secrets").any(|(_, s)| {
                    str_at(s, "name") == Some(secret.name.as_str())
                        && s.get("generic_secret").is_some()
                });
                if !held {
                    report.find(
                        path,
                        format!(
                            "keys_secret names the secret {}, which static_resources.secrets \
                             does not hold as a generic_secret: Envoy refuses the configuration",
                            secret.name
                        ),
                        format!(
                            "add static_resources.secrets: [{{name: {}, generic_secret: \
                             {{secret: {{inline_string: <keys>}}}}}}]",
                            secret.name
                        ),
                    );
                }
            }
            Some(_) => {
                let node = bootstrap.get("node");
                let named = |field| {
                    node.and_then(|n| str_at(n, field))
                        .is_some_and(|v| !v.is_empty())
                };
                if !named("id") || !named("cluster") {
                    report.find(
                        path,
                        format!(
                            "keys_secret has the secret {} served by SDS, but the bootstrap has \
                             no node.id and node.cluster: Envoy refuses the subscription",
                            secret.name
                        ),
                        "add node: {id: <name>, cluster: <name>}",
                    );
                }
            }
        }
    }
}

fn check_vm_ids(vm_ids: &[(String, Option<String>)], report: &mut Report) {
    let first = vm_ids
        .iter()
        .find_map(|(p, id)| id.as_ref().map(|id| (p, id)));
    for (path, id) in vm_ids {
        match (id, first) {
            (None, _) => report.find(
                &format!("{path}.typed_config.config.vm_config"),
                "no vm_id: Envoy keeps shared data per vm_id, and tether's binding tables and \
                 per-Envoy secret must be one per Envoy",
                "set vm_id: tether (the same in every tether filter of this Envoy)",
            ),
            (Some(id), Some((first_path, first_id))) if id != first_id => report.find(
                &format!("{path}.typed_config.config.vm_config.vm_id"),
                format!(
                    "{id:?} differs from {first_id:?} at {first_path}: each vm_id keeps its own \
                     binding tables and per-Envoy secret"
                ),
                format!("set vm_id: {first_id}"),
            ),
            _ => {}
        }
    }
}

/// Envoy's endpoint statuses: the override-host call of the native build skips an endpoint
/// whose status its cluster does not list.
const ALL_HOST_STATUSES: &[&str] = &[
    "UNKNOWN",
    "HEALTHY",
    "UNHEALTHY",
    "DRAINING",
    "TIMEOUT",
    "DEGRADED",
];

/// What the override-host call accepts when a cluster does not say.
const DEFAULT_HOST_STATUSES: &[&str] = &["UNKNOWN", "HEALTHY", "DEGRADED"];

fn check_cluster(cpath: &str, cluster: &Value, need: &Needs, report: &mut Report) {
    let checks: Vec<(usize, &Value)> = items(Some(cluster), "health_checks").collect();
    if checks.is_empty() {
        report.find(
            cpath,
            "no active health checks: new sessions go to dead endpoints",
            "add health_checks with no_traffic_interval (envoy/envoy.yaml's)",
        );
    }
    for (i, hc) in &checks {
        if hc.get("no_traffic_interval").is_none() {
            report.find(
                &format!("{cpath}.health_checks[{i}]"),
                "no no_traffic_interval: Envoy checks only every 60 s until traffic has flowed",
                "add no_traffic_interval (e.g. the interval)",
            );
        }
    }
    if cluster.get("outlier_detection").is_none() {
        report.find(
            cpath,
            "no outlier detection: between two health checks, new sessions still go to an \
             endpoint that fails",
            "add outlier_detection (envoy/envoy.yaml's: consecutive_5xx, \
             consecutive_local_origin_failure, split_external_local_origin_errors)",
        );
    }
    let budget = cluster
        .get("circuit_breakers")
        .into_iter()
        .flat_map(|c| items(Some(c), "thresholds"))
        .any(|(_, t)| t.get("retry_budget").is_some());
    if !budget {
        report.find(
            cpath,
            "no retry budget: when an endpoint dies, Envoy's default of 3 retries in flight \
             fails the rest of its sessions' requests with 503",
            "add circuit_breakers.thresholds[].retry_budget",
        );
    }
    let idle = cluster
        .get("typed_extension_protocol_options")
        .and_then(|o| o.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"))
        .and_then(|o| o.get("common_http_protocol_options"))
        .and_then(|o| o.get("idle_timeout"));
    // An explicit value is the user's reading of their backends' keep-alive; Envoy's default of
    // an hour (or none, for 0s) outlasts every common one.
    if idle.is_none_or(is_zero) {
        report.find(
            cpath,
            "no upstream idle_timeout: Envoy keeps an idle backend connection for an hour, \
             backends close theirs sooner (uvicorn, Node, Apache: 5 s), and a request sent as \
             one closes is reset: retried elsewhere, its session leaves a live endpoint",
            "set typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.\
             HttpProtocolOptions].common_http_protocol_options.idle_timeout below the backends' \
             keep-alive timeout (envoy/envoy.yaml's: 4s)",
        );
    }
    if need.wasm {
        check_override_host(cpath, cluster, need, report);
        check_upstream_strip(cpath, cluster, need, report);
    }
    if need.native {
        let listed: Vec<&str> = match cluster
            .get("common_lb_config")
            .and_then(|c| c.get("override_host_status"))
        {
            Some(o) => items(Some(o), "statuses")
                .filter_map(|(_, s)| s.as_str())
                .collect(),
            None => DEFAULT_HOST_STATUSES.to_vec(),
        };
        let missing: Vec<&str> = ALL_HOST_STATUSES
            .iter()
            .copied()
            .filter(|s| !listed.contains(s))
            .collect();
        if !missing.is_empty() {
            report.find(
                cpath,
                format!(
                    "the override-host call skips endpoints that are {}: a pinned session leaves \
                     an endpoint that drains or fails a health check",
                    missing.join(", ")
                ),
                format!(
                    "set common_lb_config.override_host_status.statuses: [{}]",
                    ALL_HOST_STATUSES.join(", ")
                ),
            );
        }
    }
}

fn check_override_host(cpath: &str, cluster: &Value, need: &Needs, report: &mut Report) {
    let policies: Vec<(usize, &Value)> = cluster
        .get("load_balancing_policy")
        .into_iter()
        .flat_map(|p| items(Some(p), "policies"))
        .collect();
    let found = policies.iter().find(|(_, p)| {
        p.get("typed_extension_config").is_some_and(|t| {
            str_at(t, "name") == Some("envoy.load_balancing_policies.override_host")
                || t.get("typed_config")
                    .is_some_and(|c| type_is(c, "override_host.v3.OverrideHost"))
        })
    });
    let headers: Vec<&str> = need.host_headers.iter().map(String::as_str).collect();
    let host_header = headers.first().copied().unwrap_or("x-tether-host");
    let Some((pi, policy)) = found else {
        report.find(
            cpath,
            format!(
                "no override_host load-balancing policy: nothing reads {}, so no session is pinned",
                headers.join(" or ")
            ),
            format!(
                "add load_balancing_policy.policies[].typed_extension_config \
                 envoy.load_balancing_policies.override_host with override_host_sources: \
                 [{{header: {host_header}}}] and a fallback_policy"
            ),
        );
        return;
    };
    let ppath = format!("{cpath}.load_balancing_policy.policies[{pi}]");
    if *pi != 0 {
        report.find(
            &ppath,
            "override_host is not the first policy: Envoy uses the first one it supports",
            "move it to policies[0]",
        );
    }
    let typed = policy
        .get("typed_extension_config")
        .and_then(|t| t.get("typed_config"));
    let sources: Vec<String> = items(typed, "override_host_sources")
        .filter_map(|(_, s)| str_at(s, "header").map(str::to_ascii_lowercase))
        .collect();
    for h in headers {
        if !sources.iter().any(|s| s == h) {
            let reads = if sources.is_empty() {
                "reads no header".to_string()
            } else {
                format!("reads {}", sources.join(", "))
            };
            report.find(
                &format!("{ppath}.typed_extension_config.typed_config.override_host_sources"),
                format!(
                    "{reads}, but tether sets {h} (upstream.host_header): every request is \
                     load-balanced as a new session"
                ),
                format!("add {{header: {h}}}"),
            );
        }
    }
    let Some(fallback) = typed.and_then(|t| t.get("fallback_policy")) else {
        report.find(
            &format!("{ppath}.typed_extension_config.typed_config"),
            "no fallback_policy: nothing chooses an endpoint for new sessions",
            "add fallback_policy (round robin, or a subset policy for strict sessions)",
        );
        return;
    };
    for (key, strict_route) in &need.strict_keys {
        let selector = items(Some(fallback), "policies")
            .filter_map(|(_, p)| p.get("typed_extension_config"))
            .filter(|t| {
                str_at(t, "name") == Some("envoy.load_balancing_policies.subset")
                    || t.get("typed_config")
                        .is_some_and(|c| type_is(c, "subset.v3.Subset"))
            })
            .filter_map(|t| t.get("typed_config"))
            .flat_map(|c| items(Some(c), "subset_selectors").map(|(_, s)| s))
            .any(|s| {
                items(Some(s), "keys").any(|(_, k)| k.as_str() == Some(key))
                    && str_at(s, "fallback_policy") == Some("NO_FALLBACK")
            });
        if !selector {
            report.find(
                &format!("{ppath}.typed_extension_config.typed_config.fallback_policy"),
                format!(
                    "no subset selector for {key} with NO_FALLBACK (asked for by {strict_route}): \
                     a strict session whose endpoint left the cluster is run on another"
                ),
                format!(
                    "wrap the fallback in envoy.load_balancing_policies.subset with \
                     fallback_policy: ANY_ENDPOINT and subset_selectors: [{{keys: [{key}], \
                     fallback_policy: NO_FALLBACK}}]"
                ),
            );
        }
    }
}

fn check_upstream_strip(cpath: &str, cluster: &Value, need: &Needs, report: &mut Report) {
    let removed: Vec<String> = cluster
        .get("typed_extension_protocol_options")
        .and_then(|o| o.get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"))
        .into_iter()
        .flat_map(|o| items(Some(o), "http_filters"))
        .filter_map(|(_, f)| f.get("typed_config"))
        .filter(|t| type_is(t, "header_mutation.v3.HeaderMutation"))
        .filter_map(|t| t.get("mutations"))
        .flat_map(|m| items(Some(m), "request_mutations"))
        .filter_map(|(_, m)| str_at(m, "remove").map(str::to_ascii_lowercase))
        .collect();
    for h in &need.stripped {
        if !removed.contains(h) {
            report.find(
                cpath,
                format!("nothing removes {h} upstream: backends receive it"),
                format!(
                    "add to typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.\
                     HttpProtocolOptions.http_filters a header_mutation with request_mutations: \
                     [{{remove: {h}}}], before upstream_codec"
                ),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The bootstrap in one spelling.

/// The bootstrap as this command reads it: every field by its proto name, and every
/// `TypedStruct` as the message it carries. Envoy accepts a field by its proto name or its
/// JSON name (`typedConfig` for `typed_config`), and an extension's config as a `TypedStruct`
/// (what Istio and some generators write); read as written, either would hide a whole filter or
/// cluster from the checks and report it missing.
fn proto_form(v: &Value) -> Value {
    match v {
        Value::Object(fields) => {
            if let Some(carried) = typed_struct(fields) {
                return carried;
            }
            let mut out = serde_json::Map::new();
            for (key, value) in fields {
                let name = proto_name(key);
                let value = match name.as_str() {
                    // A Struct or a map of Structs: the keys are the user's own (metadata names,
                    // runtime keys), compared as written.
                    "filter_metadata" | "typed_filter_metadata" | "static_layer" => value.clone(),
                    // Maps whose keys are names (of filters, of extensions) and whose values are
                    // messages.
                    "typed_per_filter_config" | "typed_extension_protocol_options" => match value {
                        Value::Object(map) => Value::Object(
                            map.iter()
                                .map(|(k, v)| (k.clone(), proto_form(v)))
                                .collect(),
                        ),
                        other => proto_form(other),
                    },
                    _ => proto_form(value),
                };
                out.insert(name, value);
            }
            Value::Object(out)
        }
        Value::Array(list) => Value::Array(list.iter().map(proto_form).collect()),
        other => other.clone(),
    }
}

/// A `TypedStruct` (`udpa.type.v1` or `xds.type.v3`) as the message of its `type_url`.
fn typed_struct(fields: &serde_json::Map<String, Value>) -> Option<Value> {
    let kind = fields.get("@type").and_then(Value::as_str)?;
    if !(kind.ends_with("udpa.type.v1.TypedStruct") || kind.ends_with("xds.type.v3.TypedStruct")) {
        return None;
    }
    let url = fields
        .get("type_url")
        .or_else(|| fields.get("typeUrl"))
        .and_then(Value::as_str)?;
    let mut carried = match fields.get("value").map(proto_form) {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    carried.insert("@type".into(), Value::String(url.to_string()));
    Some(Value::Object(carried))
}

/// A field's proto name from its JSON name (`typedConfig` -> `typed_config`); a proto name, and
/// `@type`, as they are.
fn proto_name(key: &str) -> String {
    if !key.bytes().any(|b| b.is_ascii_uppercase()) {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Reading JSON values without indexing.

fn items<'a>(v: Option<&'a Value>, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `path (name)`, when the element has a name.
fn named(path: &str, v: &Value) -> String {
    match str_at(v, "name") {
        Some(name) => format!("{path} ({name})"),
        None => path.to_string(),
    }
}

fn type_is(typed: &Value, suffix: &str) -> bool {
    str_at(typed, "@type").is_some_and(|t| t.ends_with(suffix))
}

/// A protobuf integer: JSON writes 64-bit ones as strings, YAML writers either way.
fn value_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .or_else(|| v.get("value").and_then(value_u64))
}

/// A protobuf Duration of zero: `0s`, `0`, or `{seconds: 0}`.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s
            .trim_end_matches('s')
            .parse::<f64>()
            .is_ok_and(|n| n == 0.0),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Object(o) => o.values().all(|x| x.as_f64() == Some(0.0)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A connection manager with tether (Wasm, `plugin` as its JSON) before the router, and
    /// `routes` in one virtual host.
    fn bootstrap(plugin: &str, routes: Value, clusters: Value) -> Value {
        json!({"static_resources": {
            "listeners": [{"name": "l", "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "upgrade_configs": [{"upgrade_type": "websocket"}],
                    "route_config": {"virtual_hosts": [{"name": "v", "routes": routes,
                        "retry_policy": {"retry_on": "connect-failure,reset",
                            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
                            "host_selection_retry_max_attempts": "5"}}]},
                    "http_filters": [
                        {"name": "tether", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": {"configuration": {"value": plugin},
                                       "vm_config": {"vm_id": "tether"}}}},
                        {"name": "envoy.filters.http.router", "typed_config": {}}]}}]}]}],
            "clusters": clusters}})
    }

    fn lines(r: &Report) -> Vec<String> {
        r.findings.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_virtual_hosts_retry_policy_serves_its_routes_and_unknown_clusters_are_noted() {
        let r = check(&bootstrap(
            "{}",
            json!([{"name": "a", "match": {"prefix": "/"}, "route": {"cluster": "elsewhere"}}]),
            json!([]),
        ));
        assert!(r.findings.is_empty(), "{:?}", lines(&r));
        assert_eq!(r.routes, 1);
        assert_eq!(r.notes.len(), 1);
        assert!(
            r.notes[0].starts_with("cluster elsewhere (used by "),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn routes_tether_does_not_serve_are_not_checked() {
        let routes = json!([
            {"name": "off", "match": {"prefix": "/a"}, "route": {"cluster": "c"}},
            {"name": "per-filter", "match": {"prefix": "/b"}, "route": {"cluster": "c"},
             "typed_per_filter_config": {"tether": {"disabled": true}}},
            {"name": "redirect", "match": {"prefix": "/c"}, "redirect": {"path_redirect": "/"}}
        ]);
        let r = check(&bootstrap(
            r#"{"routes": {"off": {"disabled": true}}}"#,
            routes,
            json!([{"name": "c"}]),
        ));
        assert_eq!(r.routes, 0);
        assert_eq!(r.clusters, 0, "no served route sends traffic to c");
        assert!(r.findings.is_empty(), "{:?}", lines(&r));
    }

    #[test]
    fn a_cluster_of_a_served_route_is_held_to_every_requirement() {
        let r = check(&bootstrap(
            "{}",
            json!([{"name": "a", "match": {"prefix": "/"}, "route": {"cluster": "c"}}]),
            json!([{"name": "c"}]),
        ));
        let found = lines(&r);
        let problems: Vec<&str> = r.findings.iter().map(|f| f.problem.as_str()).collect();
        assert_eq!(found.len(), 6, "{found:?}");
        assert!(problems[0].starts_with("no active health checks"));
        assert!(problems[1].starts_with("no outlier detection"));
        assert!(problems[2].starts_with("no retry budget"));
        assert!(problems[3].starts_with("no upstream idle_timeout"));
        assert!(problems[4].starts_with("no override_host load-balancing policy"));
        assert!(problems[5].starts_with("nothing removes x-tether-host upstream"));
        assert!(r
            .findings
            .iter()
            .all(|f| f.path == "static_resources.clusters[0] (c)"));
    }

    #[test]
    fn routes_from_rds_are_noted_not_guessed() {
        let mut b = bootstrap("{}", json!([]), json!([]));
        let hcm = b
            .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
            .and_then(Value::as_object_mut)
            .unwrap();
        hcm.remove("route_config");
        hcm.insert("rds".into(), json!({"route_config_name": "r"}));
        let r = check(&b);
        assert!(r.findings.is_empty());
        assert!(r.notes[0].ends_with("routes come from RDS: not checked"));
    }

    #[test]
    fn json_names_become_proto_names_but_the_users_own_keys_stay() {
        let v = proto_form(&json!({
            "typedConfig": {"@type": "t", "routeConfig": {}},
            "metadata": {"filterMetadata": {"envoy.lb": {"tetherStrict": "pinned"}}},
            "typedPerFilterConfig": {"myTether": {"disabled": true}},
        }));
        assert_eq!(
            v,
            json!({
                "typed_config": {"@type": "t", "route_config": {}},
                "metadata": {"filter_metadata": {"envoy.lb": {"tetherStrict": "pinned"}}},
                "typed_per_filter_config": {"myTether": {"disabled": true}},
            })
        );
        let carried = proto_form(&json!({
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "typeUrl": "type.googleapis.com/x.Y",
            "value": {"vmConfig": {"vm_id": "a"}},
        }));
        assert_eq!(
            carried,
            json!({"@type": "type.googleapis.com/x.Y", "vm_config": {"vm_id": "a"}})
        );
    }

    #[test]
    fn protobuf_numbers_and_durations_in_their_json_forms() {
        assert_eq!(value_u64(&json!(5)), Some(5));
        assert_eq!(value_u64(&json!("5")), Some(5));
        assert_eq!(value_u64(&json!({"value": 5})), Some(5));
        assert_eq!(value_u64(&json!("five")), None);
        assert!(is_zero(&json!("0s")) && is_zero(&json!("0.000s")) && is_zero(&json!(0)));
        assert!(is_zero(&json!({"seconds": 0})));
        assert!(!is_zero(&json!("2s")) && !is_zero(&json!({"seconds": 1})));
    }
}
