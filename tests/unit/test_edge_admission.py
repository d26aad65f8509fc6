"""Shedding load at the edge: the ingress admits to a deployment only what the deployment can hold."""

from __future__ import annotations

import pytest

from deployments.errors import ServiceError
from edge.admission import EdgeAdmission
from edge.ingress import IngressConfig


def details(text_replicas: int, ingresses: int) -> dict:
    def replicas(n: int) -> list[dict]:
        return [{"state": "RUNNING"}] * n + [{"state": "STARTING"}]

    return {
        "applications": {
            "app": {
                "deployments": {
                    "ingress": {"replicas": replicas(ingresses), "deployment_config": {}},
                    "text": {
                        "replicas": replicas(text_replicas),
                        "deployment_config": {"max_ongoing_requests": 48, "max_queued_requests": 64},
                    },
                    "image": {
                        "replicas": replicas(1),
                        "deployment_config": {"max_ongoing_requests": 4, "max_queued_requests": -1},
                    },
                }
            }
        }
    }


def test_capacity_is_what_running_replicas_hold_shared_among_ingresses() -> None:
    edge = EdgeAdmission("app", ("text", "image", "voice"), IngressConfig(retry_after_s=3))
    assert edge.read(details(text_replicas=2, ingresses=2)) == {"text": 112, "image": None, "voice": None}
    assert edge.read(details(text_replicas=0, ingresses=1))["text"] is None  # none running: Serve waits for one


def test_calls_beyond_capacity_are_refused_at_once_with_retry_after() -> None:
    edge = EdgeAdmission("app", ("text",), IngressConfig(retry_after_s=3))
    edge.capacity = {"text": 2}
    with edge.enter("text"), edge.enter("text"):
        with pytest.raises(ServiceError) as refused, edge.enter("text"):
            pass
        assert refused.value.status == 503 and refused.value.headers()["Retry-After"] == "3"
    with edge.enter("text"):  # places come back when calls end
        assert edge.describe()["inflight"] == {"text": 1}
