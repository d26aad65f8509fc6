"""A/B experiments: several model versions of one service side by side, with a configured traffic split.

Each variant is its own Serve deployment (e.g. ``text`` and ``text-b``), with its own resources, autoscaling and
model; the application's ``args.variants`` says which extra deployments exist, and the ingress's ``user_config``
says how traffic splits between them, so weights change in place with ``serve deploy`` (no replica restarts).

Assignment is sticky per user: ``sha256(salt:user_id)`` picks a point in [0, 1) that falls into a variant's
share of the cumulative weights, so every ingress replica, and every restart, puts a user in the same variant
(never Python's salted ``hash()``). Anonymous requests are assigned at random. A request may pin a variant by
naming it, or its model, in the ``model`` field; the experiment's own ``model`` alias (or none) means "split".
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from deployments.common import StrictModel
from deployments.registry import VARIANT_SERVICES
from deployments.telemetry import telemetry

ExperimentService = Literal[VARIANT_SERVICES]  # type: ignore[valid-type]  # the services that can run variants
LATENCY_WINDOW = 2000  # latencies kept per variant for percentiles


class VariantConfig(StrictModel):
    deployment: str = Field(min_length=1, description="The Serve deployment that serves this variant.")
    weight: float = Field(ge=0, le=1_000_000, description="Share of traffic (relative to the other variants).")
    model: str | None = Field(
        None, max_length=256, description="Served model name of the variant: a request naming it is pinned here."
    )


class ExperimentConfig(StrictModel):
    """One experiment on one service."""

    service: ExperimentService
    model: str | None = Field(
        None, max_length=256, description="Public model name of the experiment: requests naming it are split."
    )
    salt: str | None = Field(None, max_length=128, description="Hash namespace; defaults to the experiment's name.")
    variants: dict[str, VariantConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> ExperimentConfig:
        if sum(v.weight for v in self.variants.values()) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        return self


def validate_experiments(experiments: dict[str, ExperimentConfig], deployments: set[str]) -> None:
    """One experiment per service, every variant on a deployment the application has."""
    services = [e.service for e in experiments.values()]
    if len(services) != len(set(services)):
        raise ValueError("at most one experiment per service")
    for name, experiment in experiments.items():
        for variant, cfg in experiment.variants.items():
            if cfg.deployment not in deployments:
                raise ValueError(
                    f"experiment {name!r} variant {variant!r}: no deployment {cfg.deployment!r} in the app "
                    f"(known: {sorted(deployments)}; add it to the app's args.variants)"
                )


def bucket(salt: str, user_id: str) -> float:
    """A stable point in [0, 1) for a user: the same on every replica, every restart, every Python."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str
    deployment: str
    how: Literal["hash", "random", "pinned"]

    def tag(self) -> dict[str, str]:
        return {"experiment": self.experiment, "variant": self.variant}


class ExperimentRouter:
    """Chooses the deployment (and variant) for a request to a service."""

    def __init__(self, experiments: dict[str, ExperimentConfig]) -> None:
        self.by_service = {e.service: (name, e) for name, e in experiments.items()}

    def assign(self, service: str, user_id: str | None, model: str | None) -> Assignment | None:
        """The variant for this request, or None when the service runs no experiment (or the request names a
        model the experiment does not know: the service itself answers, e.g. with 404)."""
        found = self.by_service.get(service)
        if found is None:
            return None
        name, experiment = found
        if model is not None and model != experiment.model:
            for variant, cfg in experiment.variants.items():
                if model in (variant, cfg.model):
                    return Assignment(name, variant, cfg.deployment, "pinned")
            return None
        live = [(variant, cfg) for variant, cfg in experiment.variants.items() if cfg.weight > 0]
        total = sum(cfg.weight for _, cfg in live)
        point = bucket(experiment.salt or name, user_id) if user_id else random.random()
        cumulative = 0.0
        for variant, cfg in live:
            cumulative += cfg.weight / total
            if point < cumulative:
                return Assignment(name, variant, cfg.deployment, "hash" if user_id else "random")
        variant, cfg = live[-1]  # rounding at the very top of [0, 1)
        return Assignment(name, variant, cfg.deployment, "hash" if user_id else "random")


@dataclass
class _VariantStats:
    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


class ExperimentStats:
    """Request, error and latency counts per experiment variant, in this ingress replica (Prometheus has the
    fleet's: ``ray_content_studio_experiment_requests_total``)."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], _VariantStats] = {}
        self._lock = threading.Lock()
        self.since = time.time()
        self.replica: str | None = None  # the counting ingress replica's id (set in a Serve replica)

    def record(self, experiment: str, variant: str, seconds: float, ok: bool) -> None:
        with self._lock:
            stats = self._stats.setdefault((experiment, variant), _VariantStats())
            stats.requests += 1
            stats.errors += 0 if ok else 1
            stats.latencies.append(seconds)
        tags = {"experiment": experiment, "variant": variant}
        telemetry.count("content_studio_experiment_requests", outcome="ok" if ok else "error", **tags)
        telemetry.observe("content_studio_experiment_request_seconds", seconds, **tags)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        with self._lock:
            out: dict[str, dict[str, dict[str, Any]]] = {}
            for (experiment, variant), stats in self._stats.items():
                out.setdefault(experiment, {})[variant] = {
                    "requests": stats.requests,
                    "errors": stats.errors,
                    "latencies": list(stats.latencies),
                }
            return out


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    values = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {
        "p50_ms": round(float(values[0]), 2),
        "p95_ms": round(float(values[1]), 2),
        "p99_ms": round(float(values[2]), 2),
    }


# --- report schema ----------------------------------------------------------------------------------------
class VariantReport(StrictModel):
    deployment: str
    weight: float
    share: float = Field(description="Configured share of traffic, 0..1.")
    model: str | None = None
    requests: int = Field(description="Requests answered by this variant (since this ingress started).")
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    contents: int | None = Field(None, description="Stored content made with this variant (pipeline stages).")
    interactions: int | None = Field(None, description="Interactions with that content.")


class ExperimentReport(StrictModel):
    name: str
    service: ExperimentService
    model: str | None
    variants: dict[str, VariantReport]


class ExperimentList(StrictModel):
    experiments: list[ExperimentReport]
    since: float = Field(description="When the counting replica started (counts are per ingress replica).")
    replica: str | None = Field(None, description="The counting ingress replica's id (the fleet's: Prometheus).")


def report(
    experiments: dict[str, ExperimentConfig],
    stats: dict[str, dict[str, dict[str, Any]]],
    engagement: dict[str, dict[str, dict[str, int]]],
    since: float,
    replica: str | None = None,
) -> ExperimentList:
    out = []
    for name, experiment in experiments.items():
        total = sum(v.weight for v in experiment.variants.values()) or 1.0
        variants = {}
        for variant, cfg in experiment.variants.items():
            seen = stats.get(name, {}).get(variant, {"requests": 0, "errors": 0, "latencies": []})
            engaged = engagement.get(name, {}).get(variant, {})
            variants[variant] = VariantReport(
                deployment=cfg.deployment,
                weight=cfg.weight,
                share=round(cfg.weight / total, 6),
                model=cfg.model,
                requests=seen["requests"],
                errors=seen["errors"],
                **percentiles(seen["latencies"]),
                contents=engaged.get("contents", 0),
                interactions=engaged.get("interactions", 0),
            )
        out.append(ExperimentReport(name=name, service=experiment.service, model=experiment.model, variants=variants))
    return ExperimentList(experiments=out, since=since, replica=replica)
