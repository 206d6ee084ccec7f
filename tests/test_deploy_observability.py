"""`deploy/prometheus` and `deploy/grafana`: what promtool would check (YAML shape, every expression parses with a real
PromQL parser, type checks included) plus that every expression names only metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from service.metrics import FAMILIES, STAGES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for every target."""


def exported_series() -> set[str]:
    """Names a PromQL selector may use: gauges and counters as exposed, histograms through their series."""
    names = set(PROMETHEUS_OWN)
    for name, family in FAMILIES.items():
        if family.type == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def selected_metrics(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects, from the parsed syntax tree."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def grafana_expr(expr: str) -> str:
    """Grafana's interval macro to a duration PromQL accepts; `$kind`-style variables sit in label values."""
    return expr.replace("$__rate_interval", "5m")


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "chronoedit.json").read_text())


def test_selected_metrics_sees_through_functions_and_operators() -> None:
    expr = "(sum(rate(a_total[5m])) or vector(0)) / ignoring(kind) b{kind='x'} > 1 and on() c offset 5m"
    assert selected_metrics(expr) == {"a_total", "b", "c"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(a_total[5m])")  # unbalanced
    with pytest.raises(ValueError):
        promql_parser.parse("rate(a_total)")  # a range vector is required


def test_scrape_config_covers_api_and_workers_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"chronoedit-api", "chronoedit-workers"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job.get("static_configs") or job.get("file_sd_configs")
    for path in config["rule_files"]:
        assert (PROMETHEUS / path).is_file(), f"rule file {path} missing"
    for key in ("scrape_interval", "evaluation_interval"):
        promql_parser.parse_duration(config["global"][key])


def test_alert_rules_are_valid_and_use_exported_metrics() -> None:
    rules = load_rules()
    exported = exported_series()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        unknown = selected_metrics(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} uses metrics the service does not export: {unknown}"
        promql_parser.parse_duration(rule["for"])
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alerts_the_issue_asks_for_exist() -> None:
    rules = {rule["alert"]: rule for rule in load_rules()}
    queue = rules["ChronoEditQueueGrowing"]
    assert "chronoedit_queue_depth" in queue["expr"] and queue["for"] == "10m"
    assert 'stage="end_to_end"' in rules["ChronoEditEndToEndSlow"]["expr"]
    assert "histogram_quantile(0.95" in rules["ChronoEditEndToEndSlow"]["expr"]
    gpu = rules["ChronoEditGpuMemoryHigh"]["expr"]
    assert 'kind="used_by_all"' in gpu and 'kind="total"' in gpu and "0.95" in gpu
    assert "or vector(0)" in rules["ChronoEditNoReadyWorker"]["expr"], "fires when every worker is gone, too"
    assert "chronoedit_webhook_deliveries_total" in rules["ChronoEditWebhookFailures"]["expr"]


def test_dashboard_panels_are_valid_and_use_exported_metrics() -> None:
    board = dashboard()
    exported = exported_series()
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}", f"{panel['title']} ignores the data source variable"
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            unknown = selected_metrics(grafana_expr(target["expr"])) - exported
            assert not unknown, f"panel {panel['title']!r} uses metrics the service does not export: {unknown}"


def test_dashboard_has_the_panels_operators_need() -> None:
    board = dashboard()
    queries = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in board["panels"]}

    def panel_using(title: str, *needles: str) -> None:
        matches = [q for t, q in queries.items() if re.search(title, t, re.IGNORECASE)]
        assert matches, f"no panel titled like {title!r}"
        assert any(all(needle in q for needle in needles) for q in matches), f"{title}: queries lack {needles}"

    panel_using("throughput", "chronoedit_jobs_total", "rate(")
    panel_using("latency percentiles per stage and kind", "chronoedit_job_stage_seconds_bucket", "stage", "kind")
    panel_using("queue depth", "chronoedit_queue_depth")
    panel_using("gpu memory per gpu", "chronoedit_gpu_memory_bytes", "gpu")
    panel_using("worker readiness", "chronoedit_worker_ready")
    panel_using("error rates", 'status="failed"', 'status=~"5.."', "chronoedit_webhook_deliveries_total")
    stages = next(v for v in board["templating"]["list"] if v["name"] == "stage")
    assert stages["query"].split(",") == list(STAGES)


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "chronoedit.yml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
    assert dashboard()["uid"] and list((GRAFANA / "dashboards").glob("*.json")) == [
        GRAFANA / "dashboards" / "chronoedit.json"
    ]
