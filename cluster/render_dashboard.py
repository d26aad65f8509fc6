"""Render the Grafana dashboard for the content platform from a short list of panels.

    python -m cluster.render_dashboard          # writes cluster/monitoring/grafana-dashboard.json

Traffic, latency and errors per route, replicas per deployment (watch independent scaling), GPU use, and the
platform's own metrics: tokens/s, images, audio seconds, pipeline stages and results. A test checks that every
query names a metric the app really exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "monitoring" / "grafana-dashboard.json"

# (title, unit, [(PromQL, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        "HTTP requests / s by route",
        "reqps",
        [("sum by (route) (rate(ray_serve_num_http_requests_total[1m]))", "{{route}}")],
    ),
    (
        "HTTP errors / s by route and code",
        "reqps",
        [
            (
                "sum by (route, error_code) (rate(ray_serve_num_http_error_requests_total[1m]))",
                "{{route}} {{error_code}}",
            )
        ],
    ),
    (
        "HTTP latency p50 / p95 (ms)",
        "ms",
        [
            (
                "histogram_quantile(0.5, sum by (le, route) (rate(ray_serve_http_request_latency_ms_bucket[5m])))",
                "p50 {{route}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, route) (rate(ray_serve_http_request_latency_ms_bucket[5m])))",
                "p95 {{route}}",
            ),
        ],
    ),
    (
        "Healthy replicas per deployment",
        "short",
        [("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}}")],
    ),
    (
        "Service requests / s by outcome",
        "reqps",
        [("sum by (service, outcome) (rate(ray_content_studio_requests_total[1m]))", "{{service}} {{outcome}}")],
    ),
    (
        "Service latency p95 (s)",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, service) (rate(ray_content_studio_request_seconds_bucket[5m])))",
                "{{service}}",
            )
        ],
    ),
    (
        "Tokens generated / s",
        "short",
        [("sum by (model) (rate(ray_content_studio_tokens_generated_total[1m]))", "{{model}}")],
    ),
    (
        "Generation speed p50 (tokens/s per request)",
        "short",
        [
            (
                "histogram_quantile(0.5, sum by (le, model) (rate(ray_content_studio_tokens_per_second_bucket[5m])))",
                "{{model}}",
            )
        ],
    ),
    (
        "Images / min and render time p95",
        "short",
        [
            ("sum by (model) (rate(ray_content_studio_images_generated_total[5m])) * 60", "images/min {{model}}"),
            (
                "histogram_quantile(0.95, sum by (le, model) (rate(ray_content_studio_image_seconds_bucket[5m])))",
                "p95 s {{model}}",
            ),
        ],
    ),
    (
        "Audio seconds synthesized / min",
        "short",
        [("sum by (model) (rate(ray_content_studio_audio_seconds_synthesized_total[5m])) * 60", "{{model}}")],
    ),
    (
        "Embeddings / s and input tokens / s",
        "short",
        [
            ("sum by (model) (rate(ray_content_studio_embeddings_total[1m]))", "vectors/s {{model}}"),
            ("sum by (model) (rate(ray_content_studio_embedding_tokens_total[1m]))", "tokens/s {{model}}"),
        ],
    ),
    (
        "Pipeline stage latency p95 (s)",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, stage) "
                "(rate(ray_content_studio_pipeline_stage_seconds_bucket[5m])))",
                "{{stage}}",
            )
        ],
    ),
    (
        "Content: time to first audio and first image p50 (s)",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, stage) "
                '(rate(ray_content_studio_pipeline_stage_seconds_bucket{stage=~"first_audio|first_image"}[5m])))',
                "{{stage}}",
            )
        ],
    ),
    (
        "Content: overlap of stages p50 (1 = one after another)",
        "short",
        [
            (
                "histogram_quantile(0.5, sum by (le, composition) "
                "(rate(ray_content_studio_pipeline_stage_overlap_bucket[5m])))",
                "{{composition}}",
            )
        ],
    ),
    (
        "Content jobs: queue depth, and wait p95 (s)",
        "short",
        [
            ("max by (queue) (ray_content_studio_job_queue_depth)", "waiting in {{queue}}"),
            (
                "histogram_quantile(0.95, sum by (le) (rate(ray_content_studio_job_queue_seconds_bucket[5m])))",
                "wait p95 (s)",
            ),
        ],
    ),
    (
        "Content jobs by outcome / min",
        "short",
        [("sum by (outcome) (rate(ray_content_studio_jobs_total[5m])) * 60", "{{outcome}}")],
    ),
    (
        "Pipeline results / min",
        "short",
        [
            ("sum by (status) (rate(ray_content_studio_pipeline_results_total[5m])) * 60", "{{status}}"),
            (
                "sum by (stage) (rate(ray_content_studio_pipeline_stage_errors_total[5m])) * 60",
                "failed stage {{stage}}",
            ),
        ],
    ),
    (
        "Recommendations by reason / min",
        "short",
        [("sum by (reason) (rate(ray_content_studio_recommendations_total[5m])) * 60", "{{reason}}")],
    ),
    (
        "Interactions by event / min",
        "short",
        [("sum by (event) (rate(ray_content_studio_interactions_total[5m])) * 60", "{{event}}")],
    ),
    (
        "Recommender retrains / hour",
        "short",
        [("sum by (trigger) (increase(ray_content_studio_recommender_retrains_total[1h]))", "{{trigger}}")],
    ),
    (
        "Text engine: requests per step (p50, p95)",
        "short",
        [
            (
                "histogram_quantile(0.5, sum by (le, model) "
                "(rate(ray_content_studio_engine_step_requests_bucket[5m])))",
                "p50 {{model}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, model) "
                "(rate(ray_content_studio_engine_step_requests_bucket[5m])))",
                "p95 {{model}}",
            ),
        ],
    ),
    (
        "Text engine: running, waiting",
        "short",
        [
            ("sum by (model) (ray_content_studio_engine_running)", "running {{model}}"),
            ("sum by (model) (ray_content_studio_engine_waiting)", "waiting {{model}}"),
        ],
    ),
    (
        "Text engine: KV cache used",
        "percentunit",
        [("max by (model) (ray_content_studio_kv_cache_used)", "{{model}}")],
    ),
    (
        "Time to first token (p50, p95)",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, model) "
                "(rate(ray_content_studio_time_to_first_token_seconds_bucket[5m])))",
                "p50 {{model}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, model) "
                "(rate(ray_content_studio_time_to_first_token_seconds_bucket[5m])))",
                "p95 {{model}}",
            ),
        ],
    ),
    (
        "Image batch size (p50, p95)",
        "short",
        [
            (
                "histogram_quantile(0.5, sum by (le, service) (rate(ray_content_studio_batch_size_bucket[5m])))",
                "p50 {{service}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, service) (rate(ray_content_studio_batch_size_bucket[5m])))",
                "p95 {{service}}",
            ),
        ],
    ),
    (
        "Experiment traffic by variant / s",
        "reqps",
        [
            (
                "sum by (experiment, variant, outcome) (rate(ray_content_studio_experiment_requests_total[1m]))",
                "{{experiment}} {{variant}} {{outcome}}",
            )
        ],
    ),
    (
        "Experiment p95 latency by variant",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, experiment, variant) "
                "(rate(ray_content_studio_experiment_request_seconds_bucket[5m])))",
                "{{experiment}} {{variant}}",
            )
        ],
    ),
    (
        "GPU utilization and memory",
        "percent",
        [
            ("avg by (instance, GpuIndex) (ray_node_gpus_utilization)", "util {{instance}} gpu{{GpuIndex}}"),
            ("sum by (instance) (ray_node_gram_used)", "memory MB {{instance}}"),
        ],
    ),
]


def dashboard() -> dict:
    panels = []
    for index, (title, unit, queries) in enumerate(PANELS):
        panels.append(
            {
                "id": index + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend}
                    for n, (expr, legend) in enumerate(queries)
                ],
            }
        )
    return {
        "uid": "content-studio",
        "title": "Content Studio",
        "tags": ["ray", "serve", "content-studio"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
