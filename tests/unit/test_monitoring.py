"""The monitoring material: the committed dashboard is the rendered one, and its queries name real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cluster.render_dashboard import OUT, render
from deployments.telemetry import SPECS

ROOT = Path(__file__).resolve().parents[2]
# Series Serve and Ray export themselves (checked against a live scrape in tests/integration/test_observability.py)
RAY_METRICS = {
    "ray_serve_num_http_requests_total",
    "ray_serve_num_http_error_requests_total",
    "ray_serve_http_request_latency_ms_bucket",
    "ray_serve_deployment_replica_healthy",
    "ray_node_gpus_utilization",
    "ray_node_gram_used",
}


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(OUT.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"\b(ray_[a-z_]+)\b", expr)}


def test_the_committed_dashboard_is_rendered() -> None:
    assert OUT.read_text() == render(), "run: python -m cluster.render_dashboard"


def test_every_query_names_an_exported_metric() -> None:
    ours = set()
    for name, spec in SPECS.items():
        if spec.kind == "histogram":
            ours |= {f"ray_{name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            ours.add(spec.exported_name(name))
    unknown = dashboard_metrics() - ours - RAY_METRICS
    assert not unknown, unknown
    # and every metric of ours is on the dashboard: nothing exported goes unwatched
    assert {spec.exported_name(name) for name, spec in SPECS.items()} <= dashboard_metrics()


def test_prometheus_follows_rays_service_discovery() -> None:
    config = yaml.safe_load((ROOT / "cluster" / "monitoring" / "prometheus.yml").read_text())
    files = config["scrape_configs"][0]["file_sd_configs"][0]["files"]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_every_recorded_metric_is_declared() -> None:
    """A name missing from SPECS would only fail inside a replica: catch it here."""
    import re

    from deployments.telemetry import SPECS

    root = Path(__file__).resolve().parents[2]
    used = {
        name
        for folder in ("deployments", "graphs", "edge")
        for source in (root / folder).rglob("*.py")
        for name in re.findall(r"telemetry\.(?:count|observe|set)\(\s*\"([a-z_]+)\"", source.read_text())
    }
    assert used and used <= set(SPECS), used - set(SPECS)
