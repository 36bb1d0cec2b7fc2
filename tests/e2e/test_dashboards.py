"""The Grafana dashboard (deploy/grafana) and the Prometheus rules (deploy/prometheus) name only
metrics a real Envoy with tether exports, and the rules pass `promtool check rules` and their
unit tests (`promtool test rules`).

Both builds: the names are read from /stats/prometheus after traffic that moves every family,
and pass through the scrape job's `metric_relabel_configs` of deploy/prometheus/prometheus.yml
(which gives the native build's metrics the Wasm build's names), as Prometheus would store them.
"""
import json
import re
import shutil
import subprocess

import pytest
import yaml

import harness
from test_endpoint_metrics import exposition, learned_traffic, samples

DEPLOY = harness.REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tether.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "tether-rules.yml"
RULES_TESTS = DEPLOY / "prometheus" / "tether-rules.test.yml"
COMPOSE = harness.REPO / "docker-compose.yml"

# PromQL's functions, aggregations, keywords and set operators (not metric names).
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "resets",
    "changes", "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "clamp",
    "clamp_min", "clamp_max", "absent", "absent_over_time", "present_over_time", "scalar",
    "vector", "time", "timestamp", "sort", "sort_desc", "label_replace", "label_join",
    "histogram_quantile", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "last_over_time", "quantile_over_time", "stddev_over_time", "sgn",
    "inf", "nan",
}
# Grafana's functions of template-variable queries.
GRAFANA_WORDS = {"label_values", "label_names", "metrics", "query_result"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression (PromQL, with Grafana's variables) reads."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)  # Grafana's variables
    # The label lists of by/without/on/ignoring/group_left/group_right.
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    # label_values(metric, label): the label is not a metric.
    s = re.sub(r"\blabel_values\s*\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r" \1 ", s)
    s = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b|\b\d+[smhdwy]\b", " ", s)  # numbers, durations
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", s))
    return {w for w in words if w.lower() not in PROMQL_WORDS | GRAFANA_WORDS}


def test_the_tokenizer_keeps_metrics_and_drops_the_rest():
    expr = ('sum by (cluster) (rate(tether_endpoint_hits{cluster=~"$cluster", x="a b"}[$__rate_interval]))'
            ' / (sum by (cluster) (rate(tether_endpoint_rebinds_away[5m])) or 0 * tether_hits)'
            ' > 0.95 and on (instance) increase(tether_evictions[1h] offset 5m) > 1e3'
            ' / $max_sessions')
    assert metric_names(expr) == {"tether_endpoint_hits", "tether_endpoint_rebinds_away",
                                  "tether_hits", "tether_evictions"}
    assert metric_names("label_values(tether_endpoint_hits, cluster)") == {"tether_endpoint_hits"}
    assert metric_names("up") == {"up"}


def dashboard_expressions() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def relabelled(name: str) -> str:
    """`name` as the shipped scrape job stores it (its `metric_relabel_configs` of __name__)."""
    (job,) = [j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
              if j.get("metrics_path") == "/stats/prometheus"]
    for rule in job.get("metric_relabel_configs", []):
        assert rule["source_labels"] == ["__name__"] and rule["target_label"] == "__name__", rule
        m = re.fullmatch(rule["regex"], name)
        if m:
            name = m.expand(rule["replacement"].replace("$", "\\"))
    return name


def test_every_expression_names_only_metrics_envoy_exports(make_stack):
    s = make_stack({"type": "learn", "learn_from": "header", "session_name": "x-session-id"})
    learned_traffic(s)
    exported = {relabelled(name) for name, _, _ in samples(exposition(s))}
    assert "tether_endpoint_rebinds_away" in exported, sorted(n for n in exported if "tether" in n)
    used = {}
    for where, exprs in [("dashboard", dashboard_expressions()), ("rules", rule_expressions())]:
        assert exprs, where
        for e in exprs:
            names = metric_names(e)
            assert names, (where, e)
            for n in names:
                used.setdefault(n, where)
    missing = {n: w for n, w in used.items() if n not in exported}
    assert not missing, f"named but not exported by Envoy ({harness.BUILD} build): {missing}"
    # The dashboard shows what the issue asks for.
    for family in ["tether_endpoint_hits", "tether_endpoint_rebinds_away",
                   "tether_endpoint_sessions_issued", "tether_invalid_tokens",
                   "tether_forged_headers_removed", "tether_evictions", "tether_live_bindings",
                   "tether_strict_refusals"]:
        assert any(family in metric_names(e) for e in dashboard_expressions()), family


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (.ci/run does)")
    return path


def test_rules_pass_promtool_check():
    r = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rules_unit_tests_pass():
    r = subprocess.run([promtool(), "test", "rules", str(RULES_TESTS)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_loads_the_rules_and_compose_mounts_them():
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert prom["rule_files"] == [RULES.name]
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts[f"./{RULES.relative_to(harness.REPO)}"] == f"/etc/prometheus/{RULES.name}"
    r = subprocess.run([promtool(), "check", "config", str(PROMETHEUS_YML)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_relabelling_gives_the_native_names_the_wasm_ones():
    assert relabelled("envoy_dynamicmodulescustom_tether_endpoint_hits") == "tether_endpoint_hits"
    assert relabelled("tether_hits") == "tether_hits"
    assert relabelled("envoy_cluster_upstream_rq_total") == "envoy_cluster_upstream_rq_total"


def test_grafana_is_provisioned_beside_prometheus():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    g = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", g["image"]), g["image"]
    assert g["network_mode"] == "host" and "prometheus" in g["depends_on"]
    mounts = dict(v.split(":")[:2] for v in g["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    (provider,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "tether.yml").read_text())["providers"]
    assert provider["options"]["path"] == dashboards_dir
    (source,) = yaml.safe_load(
        (GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    listen = dict(a.split("=", 1) for a in services["prometheus"]["command"])["--web.listen-address"]
    assert source["url"] == f"http://{listen}"
    d = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in d["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
