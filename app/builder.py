"""Application builder: binds the model services, the content pipeline and the ingress into one app.

Used by Serve configs as ``import_path: app.builder:build_app``. The model services come from the registry
(deployments/registry.py); the builder sits above both the deployment graph (graphs/) and the edge (edge/), as
the only module that knows them all. Each deployment's configuration is its ``user_config``: the Serve config's
``deployments:`` entries carry it (so ``serve deploy`` can change one service in place), and ``args`` may give
defaults for programmatic use (``serve.run(build_app({...}))``). Resources, replicas and autoscaling come from the
Serve config, never from code.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator
from ray import serve
from ray.serve import Application

from deployments.common import StrictModel
from deployments.registry import INGRESS, JOBS, MODEL_SERVICES, PIPELINE, SERVICES, VARIANT_SERVICES
from edge.deployment import EdgeDeployment, IngressDeployment
from edge.haproxy import EdgeConfig
from edge.ingress import IngressConfig
from graphs.config import PipelineConfig
from graphs.deployment import PipelineDeployment
from graphs.jobs import JobsConfig
from graphs.jobs.consumer import consumer_deployment
from graphs.schemas import STAGES

VARIANT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
DeployableName = Literal[(*MODEL_SERVICES, PIPELINE)]  # type: ignore[valid-type]
VariantService = Literal[VARIANT_SERVICES]  # type: ignore[valid-type]


class _Deployed(StrictModel):
    """``args`` of the application besides the default configs: what it deploys, and experiment variants."""

    services: list[DeployableName] | None = Field(
        None,
        description="The model services to deploy, and `pipeline` (which needs every service it calls); default: "
        "all. The ingress is always deployed; routes of a service left out answer 404. Tests deploy the few "
        "services they need.",
    )
    variants: dict[VariantService, list[str]] = Field(
        default_factory=dict,
        description="Extra deployments of a service for A/B experiments, by deployment name (e.g. "
        "`{text: [text-b]}`); each gets its own entry (model, resources, autoscaling) in the Serve config, and "
        "the ingress's `experiments` split traffic between them in place.",
    )

    @field_validator("variants")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        names = [n for names in value.values() for n in names]
        for name in names:
            if name in (*MODEL_SERVICES, PIPELINE, INGRESS, JOBS) or not VARIANT_NAME.match(name):
                raise ValueError(f"{name!r}: a variant needs its own deployment name (letters, digits, - and _)")
        if len(names) != len(set(names)):
            raise ValueError("variant deployment names must be unique")
        return value

    @model_validator(mode="after")
    def _complete(self) -> _Deployed:
        deployed = set(self.deployed())
        if PIPELINE in deployed and not set(STAGES.values()) <= deployed:
            raise ValueError(f"services: the pipeline needs {sorted(set(STAGES.values()))}")
        for service in self.variants:
            if service not in deployed:
                raise ValueError(f"variants: {service!r} is not deployed (see `services`)")
        return self

    def deployed(self) -> list[str]:
        return list(self.services) if self.services is not None else [*MODEL_SERVICES, PIPELINE]


AppArgs = create_model(
    "AppArgs",
    __base__=_Deployed,
    __doc__="``args`` of the application: optional default ``user_config`` per deployment, validated here.",
    **{
        name: (spec.config_class() | None, Field(None, description=f"Default user_config of the `{name}` service."))
        for name, spec in SERVICES.items()
    },
    pipeline=(PipelineConfig | None, Field(None, description="Default user_config of the `pipeline`.")),
    jobs=(
        JobsConfig | None,
        Field(
            None,
            description="Content jobs (`POST /v1/jobs`): where they are kept and queued; deploys the `jobs` "
            "consumer (it needs the pipeline). Without it the application takes no jobs.",
        ),
    ),
    ingress=(IngressConfig | None, Field(None, description="Default user_config of the `ingress`.")),
)


def _with_config(deployment: serve.Deployment, config: StrictModel | None) -> serve.Deployment:
    if config is None:
        return deployment
    return deployment.options(user_config=config.model_dump(mode="json", exclude_unset=True))


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the content-studio application graph (DeploymentHandle composition)."""
    return build_graph(AppArgs.model_validate(args or {}))


def build_graph(parsed: Any, replace: dict[str, serve.Deployment] | None = None) -> Application:
    """The graph for parsed ``AppArgs``; ``replace`` swaps a service's deployment class (the benchmark serves its
    static-batching text baseline in the same app)."""
    replace = replace or {}
    deployed = parsed.deployed()
    kinds = {name: replace.get(name) or SERVICES[name].deployment_class() for name in MODEL_SERVICES}
    handles: dict[str, Any] = {}
    for name in sorted((n for n in MODEL_SERVICES if n in deployed), key=lambda n: len(SERVICES[n].calls)):
        called = {c: handles[c] for c in SERVICES[name].calls if c in handles}  # services without calls first
        handles[name] = _with_config(kinds[name], getattr(parsed, name)).bind(**called)
    variants = [name for names in parsed.variants.values() for name in names]
    for service, names in parsed.variants.items():
        for name in names:
            handles[name] = kinds[service].options(name=name).bind()
    if PIPELINE in deployed:
        handles[PIPELINE] = _with_config(PipelineDeployment, parsed.pipeline).bind(dict(handles))
    jobs = parsed.jobs.model_dump(mode="json") if parsed.jobs is not None else None
    if jobs is not None:
        if PIPELINE not in deployed:
            raise ValueError("jobs: content jobs need the pipeline (see `services`)")
        handles[JOBS] = consumer_deployment(parsed.jobs).bind(handles[PIPELINE], jobs)
    return _with_config(IngressDeployment, parsed.ingress).bind(handles, variants=tuple(variants), jobs=jobs)


def build_edge(args: dict[str, Any] | None = None) -> Application:
    """The C edge as an application of its own (``import_path: app.builder:build_edge``, no route prefix): its
    config is the deployment's ``user_config`` (``edge.haproxy.EdgeConfig``); ``args`` may give a default."""
    return _with_config(EdgeDeployment, EdgeConfig.model_validate(args or {})).bind()
