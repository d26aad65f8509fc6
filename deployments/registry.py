"""The model services of the application, by name: the one place that spells them.

The builder deploys what this lists, the edge routes to it, health reports it, experiments split its traffic
(``variants``: services whose requests name a model, so an A/B candidate can serve them). A new model service
joins by adding its package under ``deployments/`` and one entry here. Classes are named by import path, so
reading the registry imports no model library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    deployment: str  # "module:Class" of the Serve deployment
    config: str  # "module:Class" of its user_config
    variants: bool  # can run A/B variants (extra deployments of the same code with another model)
    calls: tuple[str, ...] = ()  # services it may call (their handles are bound to it when deployed)
    # Calls travel by value over the replica's own gRPC server instead of as Ray actor tasks through the object
    # store: one message per streamed item, no object per token (docs/edge-measurements.md measures both). For
    # services whose requests and answers are small (text: prompts, tokens); media stays on the object store,
    # since a gRPC message is capped at 4 MB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH).
    by_value: bool = False

    def deployment_class(self) -> Any:
        return _load(self.deployment)

    def config_class(self) -> Any:
        return _load(self.config)


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec(
            "text", "deployments.text:TextDeployment", "deployments.text:TextConfig", variants=True, by_value=True
        ),
        ServiceSpec("image", "deployments.image:ImageDeployment", "deployments.image:ImageConfig", variants=True),
        ServiceSpec("voice", "deployments.voice:VoiceDeployment", "deployments.voice:VoiceConfig", variants=True),
        ServiceSpec(
            "recommend",
            "deployments.recommend:RecommendDeployment",
            "deployments.recommend:RecommendConfig",
            variants=False,
            calls=("embed",),  # content vectors from the embedding service, when its config asks for them
        ),
        ServiceSpec("embed", "deployments.embed:EmbedDeployment", "deployments.embed:EmbedConfig", variants=False),
    )
}
MODEL_SERVICES: tuple[str, ...] = tuple(SERVICES)
VARIANT_SERVICES: tuple[str, ...] = tuple(name for name, spec in SERVICES.items() if spec.variants)
PIPELINE = "pipeline"  # the content pipeline's deployment (graphs/)
INGRESS = "ingress"  # the HTTP edge's deployment (edge/)
JOBS = "jobs"  # the content jobs consumer's deployment (graphs/jobs/), deployed with `args.jobs`


class CallHandles:
    """The handle each deployment is called through, made once (Serve's ``options`` makes a new handle): by value
    over the replica's gRPC server when its service takes calls so (``ServiceSpec.by_value``) and the caller's
    config allows it (``by_value_calls``), else Serve's default, through the object store. The ingress and the
    pipeline both call through it."""

    def __init__(self, handles: dict[str, Any]) -> None:
        self.handles = handles
        self._by_value: dict[str, Any] = {}

    def get(self, deployment: str, service: str, by_value_calls: bool) -> Any | None:
        """``deployment``'s handle (None: not deployed), for a call to ``service`` (a variant's is its service's)."""
        found = self.handles.get(deployment)
        spec = SERVICES.get(service)
        if found is None or spec is None or not spec.by_value or not by_value_calls:
            return found
        if deployment not in self._by_value:
            self._by_value[deployment] = found.options(_by_reference=False)
        return self._by_value[deployment]
