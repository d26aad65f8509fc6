"""Application builder: binds the four model deployments, the content pipeline and the ingress into one app.

Used by Serve configs as ``import_path: graphs.app:build_app``. Each deployment's configuration is its
``user_config``: the Serve config's ``deployments:`` entries carry it (so ``serve deploy`` can change one
service in place), and ``args`` may give defaults for programmatic use (``serve.run(build_app({...}))``).
Resources, replicas and autoscaling come from the Serve config, never from code.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator
from ray import serve
from ray.serve import Application

from deployments.common import StrictModel
from deployments.image import ImageConfig, ImageDeployment
from deployments.recommend import RecommendConfig, RecommendDeployment
from deployments.text import TextConfig, TextDeployment
from deployments.voice import VoiceConfig, VoiceDeployment
from graphs.ingress import Ingress, IngressConfig
from graphs.pipeline import PipelineConfig, PipelineDeployment

VARIANT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class AppArgs(StrictModel):
    """``args`` of the application: optional default ``user_config`` per deployment, validated here."""

    text: TextConfig | None = Field(None, description="Default user_config of the `text` deployment.")
    image: ImageConfig | None = Field(None, description="Default user_config of the `image` deployment.")
    voice: VoiceConfig | None = Field(None, description="Default user_config of the `voice` deployment.")
    recommend: RecommendConfig | None = Field(None, description="Default user_config of `recommend`.")
    pipeline: PipelineConfig | None = Field(None, description="Default user_config of the `pipeline`.")
    ingress: IngressConfig | None = Field(None, description="Default user_config of the `ingress`.")
    variants: dict[Literal["text", "image", "voice"], list[str]] = Field(
        default_factory=dict,
        description="Extra deployments of a service for A/B experiments, by deployment name (e.g. "
        "`{text: [text-b]}`); each gets its own entry (model, resources, autoscaling) in the Serve config, and "
        "the ingress's `experiments` split traffic between them in place.",
    )

    @field_validator("variants")
    @classmethod
    def _names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        names = [n for names in value.values() for n in names]
        taken = {"text", "image", "voice", "recommend", "pipeline", "ingress"}
        for name in names:
            if name in taken or not VARIANT_NAME.match(name):
                raise ValueError(f"{name!r}: a variant needs its own deployment name (letters, digits, - and _)")
        if len(names) != len(set(names)):
            raise ValueError("variant deployment names must be unique")
        return value


def _with_config(deployment: serve.Deployment, config: StrictModel | None) -> serve.Deployment:
    if config is None:
        return deployment
    return deployment.options(user_config=config.model_dump(mode="json", exclude_unset=True))


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the content-studio application graph (DeploymentHandle composition)."""
    return build_graph(AppArgs.model_validate(args or {}))


def build_graph(parsed: AppArgs, text_deployment: serve.Deployment = TextDeployment) -> Application:
    """The graph; ``text_deployment`` lets the benchmark serve its static baseline in the same app."""
    text = _with_config(text_deployment, parsed.text).bind()
    image = _with_config(ImageDeployment, parsed.image).bind()
    voice = _with_config(VoiceDeployment, parsed.voice).bind()
    recommend = _with_config(RecommendDeployment, parsed.recommend).bind()
    kinds = {"text": text_deployment, "image": ImageDeployment, "voice": VoiceDeployment}
    variants = {
        name: kinds[service].options(name=name).bind() for service, names in parsed.variants.items() for name in names
    }
    pipeline = _with_config(PipelineDeployment, parsed.pipeline).bind(text, image, voice, recommend, variants=variants)
    ingress = _with_config(Ingress, parsed.ingress)
    return ingress.bind(text, image, voice, recommend, pipeline, variants=variants)
