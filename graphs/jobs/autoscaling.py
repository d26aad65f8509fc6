"""The job consumer's autoscaling: Serve's queue-depth policy, its broker URL read where it runs.

Serve's ``AsyncInferenceAutoscalingPolicy`` polls the broker's queue length and adds it to the replicas' own load;
it runs in the Serve controller and takes a literal broker URL. In a cluster that URL holds a password, so this
policy also takes ``env:NAME`` and reads it from the controller's environment (the head pod's, from a secret).
"""

from __future__ import annotations

from typing import Any

from ray.serve.async_inference_autoscaling_policy import AsyncInferenceAutoscalingPolicy

from graphs.jobs import queue


class QueueDepthPolicy(AsyncInferenceAutoscalingPolicy):
    """Replicas for the jobs waiting on the broker plus those running (Serve's policy; ``env:`` URLs)."""

    def __init__(self, broker_url: str, queue_name: str, **kwargs: Any) -> None:
        super().__init__(queue.broker_url(broker_url), queue_name, **kwargs)
