"""Grafana dashboards and provisioning: valid JSON, unique ids, the provisioned datasource, and only metric
names that exist (the gateway's, from service/metrics.py; vLLM's vllm:*; the process collector's)."""

from __future__ import annotations

import re

import pytest

from moe_specialists.service.metrics import GatewayMetrics
from tests.deploy.conftest import (
    DASHBOARDS,
    ROOT,
    all_panels,
    dashboard_queries,
    load_dashboard,
    load_yaml,
    substitute,
    variable_queries,
)

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
# Prometheus/PromQL words that look like metric names in an expression.
PROMQL_WORDS = {
    "sum",
    "by",
    "without",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "max",
    "min",
    "avg",
    "count",
    "label_replace",
    "le",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "time",
    "vector",
    "scalar",
    "abs",
    "offset",
    "bool",
}
EXTERNAL_PREFIXES = ("vllm:", "process_")  # vLLM's own metrics and the process collector's


def gateway_sample_names() -> set[str]:
    """Every sample name the gateway's registry can export (counter _total, histogram _bucket/_sum/_count)."""
    names = set()
    for family in GatewayMetrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[family.type]
        names |= {family.name + s for s in suffixes}
    return names


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that are metric names (label names, label values and functions removed)."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d.*", w)}


def test_there_are_dashboards():
    assert {p.name for p in DASHBOARDS} >= {"memory-savings.json", "gateway-traffic.json", "vllm-engines.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_with_unique_panel_ids(path):
    dashboard = load_dashboard(path)
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {sorted(i for i in ids if ids.count(i) > 1)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{path.name}: {p['title']} is off the grid"
        if p["type"] != "row":
            assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
            assert all(t["expr"].strip() for t in p["targets"])
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    # No two panels on the same grid cell.
    cells = [
        (x, y)
        for p in panels
        for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
        for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), f"{path.name}: panels overlap"


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [load_dashboard(p) for p in DASHBOARDS]
    for key in ("uid", "title"):
        values = [d[key] for d in dashboards]
        assert len(values) == len(set(values)), f"duplicate dashboard {key}s: {values}"


def test_dashboards_use_the_provisioned_datasource():
    (source,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        refs = [p["datasource"] for p in all_panels(dashboard) if p["type"] != "row"]
        refs += [t["datasource"] for p in all_panels(dashboard) for t in p.get("targets", [])]
        refs += [v["datasource"] for v in dashboard["templating"]["list"]]
        assert refs and all(r == {"type": "prometheus", "uid": source["uid"]} for r in refs), path.name


def test_dashboard_provider_reads_the_folder_compose_mounts():
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "moe-specialists.yml")["providers"]
    compose = load_yaml(ROOT / "docker-compose.yml")
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (ROOT / "deploy" / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).is_file()


@pytest.mark.parametrize(("query_id", "expr"), dashboard_queries(), ids=[q for q, _ in dashboard_queries()])
def test_every_query_names_only_metrics_that_exist(query_id, expr):
    known = gateway_sample_names()
    names = metric_names(substitute(expr))
    assert names, f"{query_id}: no metric in {expr!r}"
    unknown = {n for n in names if n not in known and not n.startswith(EXTERNAL_PREFIXES)}
    assert not unknown, f"{query_id}: {sorted(unknown)} are not defined in service/metrics.py"


def test_template_variables_name_existing_metrics():
    known = gateway_sample_names()
    for var_id, metric, _label in variable_queries():
        assert metric in known or metric.startswith(EXTERNAL_PREFIXES), f"{var_id}: {metric}"


def test_memory_savings_dashboard_shows_what_the_issue_asks():
    exprs = " ".join(e for q, e in dashboard_queries() if q.startswith("memory-savings/"))
    for metric in (
        "moe_specialist_bytes_saved",
        "moe_specialist_bytes_saved_ratio",
        "moe_specialist_experts_kept",
        "moe_specialist_weight_bytes",
        "moe_specialist_base_weight_bytes",
        "moe_engine_memory_bytes",
        "moe_engine_kv_cache_usage_ratio",
    ):
        assert metric in exprs
