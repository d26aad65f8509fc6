"""A/B experiments: a sticky, stable traffic split from config, pinning, and the per-variant report."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from pydantic import ValidationError

from edge.experiments import (
    Assignment,
    ExperimentConfig,
    ExperimentRouter,
    ExperimentStats,
    bucket,
    report,
    validate_experiments,
)


def experiment(weights: dict[str, float], **extra) -> dict[str, ExperimentConfig]:
    variants = {
        name: {"deployment": "text" if n == 0 else f"text-{name}", "weight": w, "model": f"m-{name}"}
        for n, (name, w) in enumerate(weights.items())
    }
    return {"text-v2": ExperimentConfig(service="text", model="writer", variants=variants, **extra)}


def shares(router: ExperimentRouter, users: int) -> dict[str, float]:
    counts = Counter(router.assign("text", f"user-{n}", None).variant for n in range(users))
    return {variant: count / users for variant, count in counts.items()}


@pytest.mark.parametrize("weights", [{"control": 90, "candidate": 10}, {"a": 50, "b": 30, "c": 20}, {"a": 1, "b": 1}])
def test_the_split_is_within_two_points_over_10000_users(weights: dict[str, float]) -> None:
    got = shares(ExperimentRouter(experiment(weights)), 10_000)
    total = sum(weights.values())
    for variant, weight in weights.items():
        assert abs(got[variant] - weight / total) <= 0.02, (variant, got)


def test_assignment_is_a_stable_hash_the_same_on_every_replica() -> None:
    # The documented formula, computed independently: sha256("salt:user"), first 8 bytes over 2**64.
    expected = int.from_bytes(hashlib.sha256(b"text-v2:user-42").digest()[:8], "big") / 2**64
    assert bucket("text-v2", "user-42") == expected
    first, second = (
        ExperimentRouter(experiment({"control": 90, "candidate": 10})),
        ExperimentRouter(experiment({"control": 90, "candidate": 10})),
    )  # two ingress replicas, or one before and after a restart
    for n in range(500):
        a, b = first.assign("text", f"u{n}", None), second.assign("text", f"u{n}", None)
        assert a == b and a.how == "hash"


def test_a_salt_reshuffles_users() -> None:
    plain = ExperimentRouter(experiment({"a": 50, "b": 50}))
    salted = ExperimentRouter(experiment({"a": 50, "b": 50}, salt="round-2"))
    moved = sum(plain.assign("text", f"u{n}", None) != salted.assign("text", f"u{n}", None) for n in range(1000))
    assert 350 < moved < 650


def test_anonymous_requests_are_random() -> None:
    router = ExperimentRouter(experiment({"control": 50, "candidate": 50}))
    picks = [router.assign("text", None, None) for _ in range(400)]
    assert {p.how for p in picks} == {"random"}
    assert {p.variant for p in picks} == {"control", "candidate"}


def test_pinning_by_variant_or_model_and_the_alias_splits() -> None:
    router = ExperimentRouter(experiment({"control": 100, "candidate": 0}))
    assert router.assign("text", "u1", "candidate") == Assignment("text-v2", "candidate", "text-candidate", "pinned")
    assert router.assign("text", "u1", "m-candidate").variant == "candidate"  # its served model name
    assert router.assign("text", "u1", "writer").variant == "control"  # the experiment's alias: split (100/0)
    assert router.assign("text", "u1", "some-other-model") is None  # the service answers (404) itself
    assert router.assign("image", "u1", None) is None  # no experiment on that service
    assert all(router.assign("text", f"u{n}", None).variant == "control" for n in range(300))  # weight 0


def test_ramping_up_only_moves_users_into_the_growing_variant() -> None:
    before = ExperimentRouter(experiment({"control": 90, "candidate": 10}))
    after = ExperimentRouter(experiment({"control": 50, "candidate": 50}))
    for n in range(2000):
        if before.assign("text", f"u{n}", None).variant == "candidate":
            assert after.assign("text", f"u{n}", None).variant == "candidate"


def test_configs_are_validated() -> None:
    with pytest.raises(ValidationError, match="positive weight"):
        ExperimentConfig(service="text", variants={"a": {"deployment": "text", "weight": 0}})
    with pytest.raises(ValidationError):
        ExperimentConfig(service="text", variants={"a": {"deployment": "text", "weight": 1, "colour": "red"}})
    with pytest.raises(ValueError, match="no deployment 'text-z'"):
        validate_experiments(experiment({"control": 1, "z": 1}), {"text", "image", "voice"})
    two = {
        **experiment({"a": 1}),
        "other": ExperimentConfig(service="text", variants={"a": {"deployment": "text", "weight": 1}}),
    }
    with pytest.raises(ValueError, match="one experiment per service"):
        validate_experiments(two, {"text"})


def test_the_report_counts_requests_errors_latency_and_engagement() -> None:
    config = experiment({"control": 90, "candidate": 10})
    stats = ExperimentStats()
    control = Assignment("text-v2", "control", "text", "hash")
    for ms in range(1, 101):
        stats.record(control.experiment, control.variant, ms / 1000, ok=ms != 100)
    engagement = {"text-v2": {"control": {"contents": 3, "interactions": 7}}}
    [result] = report(config, stats.snapshot(), engagement, stats.since).experiments
    c, k = result.variants["control"], result.variants["candidate"]
    assert (c.requests, c.errors, c.share, c.contents, c.interactions) == (100, 1, 0.9, 3, 7)
    assert c.p50_ms == pytest.approx(50.5) and c.p99_ms == pytest.approx(99.01)
    assert (k.requests, k.errors, k.p50_ms, k.share, k.contents) == (0, 0, None, 0.1, 0)
