"""Domain metrics of the content platform, exported through Ray's metrics agent to Prometheus.

Serve already exports traffic, latency, errors and replica counts per deployment (``ray_serve_*``); these add
what only the services know: tokens, images, audio seconds, recommendations, pipeline stages. Ray prefixes
application metrics with ``ray_`` and counters get ``_total``: ``content_studio_tokens_generated`` is scraped as
``ray_content_studio_tokens_generated_total``. Outside a Serve replica (unit tests, scripts) recording is a no-op.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("content_studio.telemetry")

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


@dataclass(frozen=True)
class MetricSpec:
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def exported_name(self, name: str) -> str:
        """The series name Prometheus sees (Ray's prefix, the counter suffix)."""
        return {"counter": f"ray_{name}_total", "histogram": f"ray_{name}_bucket"}.get(self.kind, f"ray_{name}")


SPECS: dict[str, MetricSpec] = {
    "content_studio_requests": MetricSpec(
        "counter",
        "Requests to a model service method, by outcome (ok, client_error, error).",
        ("service", "method", "outcome"),
    ),
    "content_studio_request_seconds": MetricSpec(
        "histogram", "Time a model service spends on a request.", ("service", "method"), tuple(LATENCY_BUCKETS)
    ),
    "content_studio_tokens_generated": MetricSpec("counter", "Completion tokens generated.", ("model",)),
    "content_studio_tokens_per_second": MetricSpec(
        "histogram", "Generation speed of one request.", ("model",), (1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
    ),
    "content_studio_images_generated": MetricSpec("counter", "Images generated.", ("model",)),
    "content_studio_image_seconds": MetricSpec(
        "histogram", "Time to render one request's images.", ("model",), tuple(LATENCY_BUCKETS)
    ),
    "content_studio_audio_seconds_synthesized": MetricSpec("counter", "Seconds of audio synthesized.", ("model",)),
    "content_studio_embeddings": MetricSpec("counter", "Vectors made by the embedding service.", ("model",)),
    "content_studio_embedding_tokens": MetricSpec("counter", "Input tokens the embedding service read.", ("model",)),
    "content_studio_recommendations": MetricSpec("counter", "Recommended items, by reason.", ("reason",)),
    "content_studio_interactions": MetricSpec("counter", "Interactions recorded, by event.", ("event",)),
    "content_studio_pipeline_stage_seconds": MetricSpec(
        "histogram", "Latency of each content pipeline stage.", ("stage",), tuple(LATENCY_BUCKETS)
    ),
    "content_studio_pipeline_results": MetricSpec(
        "counter", "Content pipeline requests by result (complete, partial, failed).", ("status",)
    ),
    "content_studio_pipeline_stage_errors": MetricSpec("counter", "Failed or timed-out stages.", ("stage",)),
    "content_studio_pipeline_stage_overlap": MetricSpec(
        "histogram",
        "How much a content's stages ran at once: article, image and audio seconds over the seconds from the "
        "start to the last of them (1: one after another).",
        ("composition",),
        (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0),
    ),
    "content_studio_jobs": MetricSpec(
        "counter",
        "Runs of content jobs by how they ended (complete, partial, failed, cancelled, retrying, skipped, lost).",
        ("outcome",),
    ),
    "content_studio_job_queue_seconds": MetricSpec(
        "histogram", "Time a content job waited in the queue before its first run.", (), tuple(LATENCY_BUCKETS)
    ),
    "content_studio_job_queue_depth": MetricSpec(
        "gauge", "Content jobs waiting on the broker (read by each consumer replica).", ("queue",)
    ),
    "content_studio_recommender_retrains": MetricSpec(
        "counter", "Recommender versions trained, by trigger (admin, after_events, interval).", ("trigger",)
    ),
    "content_studio_batch_size": MetricSpec(
        "histogram", "Requests served together by one dynamic batch.", ("service",), (1, 2, 4, 8, 16, 32, 64, 128)
    ),
    "content_studio_engine_step_requests": MetricSpec(
        "histogram",
        "Requests in one step of the text engine's continuous batch.",
        ("model",),
        (1, 2, 4, 8, 16, 32, 64, 128, 256),
    ),
    "content_studio_engine_running": MetricSpec("gauge", "Requests in the text engine's running batch.", ("model",)),
    "content_studio_engine_waiting": MetricSpec("gauge", "Requests waiting for a place in the batch.", ("model",)),
    "content_studio_kv_cache_used": MetricSpec("gauge", "Share of the paged KV cache in use (0 to 1).", ("model",)),
    "content_studio_time_to_first_token_seconds": MetricSpec(
        "histogram", "Time from a generation's start to its first token.", ("model",), tuple(LATENCY_BUCKETS)
    ),
    "content_studio_experiment_requests": MetricSpec(
        "counter", "Requests routed by an experiment, by variant and outcome.", ("experiment", "variant", "outcome")
    ),
    "content_studio_experiment_request_seconds": MetricSpec(
        "histogram", "Latency of requests routed by an experiment.", ("experiment", "variant"), tuple(LATENCY_BUCKETS)
    ),
}


class Telemetry:
    """Creates the metrics on first use inside a Serve replica; every call is safe anywhere."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._disabled = False

    def __reduce__(self):  # Serve pickles deployment classes with their globals: start afresh in each process
        return (Telemetry, ())

    def _get(self) -> dict[str, Any] | None:
        if self._metrics is not None or self._disabled:
            return self._metrics
        with self._lock:
            if self._metrics is None and not self._disabled:
                try:
                    from ray import serve
                    from ray.serve import metrics

                    serve.get_replica_context()  # raises outside a replica
                    made: dict[str, Any] = {}
                    for name, spec in SPECS.items():
                        if spec.kind == "counter":
                            made[name] = metrics.Counter(name, spec.description, tag_keys=spec.tags)
                        elif spec.kind == "gauge":
                            made[name] = metrics.Gauge(name, spec.description, tag_keys=spec.tags)
                        else:
                            made[name] = metrics.Histogram(
                                name, spec.description, boundaries=list(spec.buckets), tag_keys=spec.tags
                            )
                    self._metrics = made
                except Exception:
                    self._disabled = True
        return self._metrics

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        metrics = self._get()
        if metrics is not None and value:
            self._metric(metrics, name).inc(value, tags={k: str(v) for k, v in tags.items()})

    def observe(self, name: str, value: float, **tags: str) -> None:
        metrics = self._get()
        if metrics is not None:
            self._metric(metrics, name).observe(value, tags={k: str(v) for k, v in tags.items()})

    def set(self, name: str, value: float, **tags: str) -> None:
        metrics = self._get()
        if metrics is not None:
            self._metric(metrics, name).set(value, tags={k: str(v) for k, v in tags.items()})

    @staticmethod
    def _metric(metrics: dict[str, Any], name: str) -> Any:
        if name not in metrics:
            raise KeyError(f"metric {name!r} is not in telemetry.SPECS")
        return metrics[name]


telemetry = Telemetry()
