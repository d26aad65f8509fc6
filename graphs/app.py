"""Application builder: binds the four model deployments, the content pipeline and the ingress into one app.

Used by Serve configs as ``import_path: graphs.app:build_app``. Each deployment's configuration is its
``user_config``: the Serve config's ``deployments:`` entries carry it (so ``serve deploy`` can change one
service in place), and ``args`` may give defaults for programmatic use (``serve.run(build_app({...}))``).
Resources, replicas and autoscaling come from the Serve config, never from code.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from ray import serve
from ray.serve import Application

from deployments.common import StrictModel
from deployments.image import ImageConfig, ImageDeployment
from deployments.recommend import RecommendConfig, RecommendDeployment
from deployments.text import TextConfig, TextDeployment
from deployments.voice import VoiceConfig, VoiceDeployment
from graphs.ingress import Ingress, IngressConfig
from graphs.pipeline import PipelineConfig, PipelineDeployment


class AppArgs(StrictModel):
    """``args`` of the application: optional default ``user_config`` per deployment, validated here."""

    text: TextConfig | None = Field(None, description="Default user_config of the `text` deployment.")
    image: ImageConfig | None = Field(None, description="Default user_config of the `image` deployment.")
    voice: VoiceConfig | None = Field(None, description="Default user_config of the `voice` deployment.")
    recommend: RecommendConfig | None = Field(None, description="Default user_config of `recommend`.")
    pipeline: PipelineConfig | None = Field(None, description="Default user_config of the `pipeline`.")
    ingress: IngressConfig | None = Field(None, description="Default user_config of the `ingress`.")


def _with_config(deployment: serve.Deployment, config: StrictModel | None) -> serve.Deployment:
    if config is None:
        return deployment
    return deployment.options(user_config=config.model_dump(mode="json", exclude_unset=True))


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the content-studio application graph (DeploymentHandle composition)."""
    parsed = AppArgs.model_validate(args or {})
    text = _with_config(TextDeployment, parsed.text).bind()
    image = _with_config(ImageDeployment, parsed.image).bind()
    voice = _with_config(VoiceDeployment, parsed.voice).bind()
    recommend = _with_config(RecommendDeployment, parsed.recommend).bind()
    pipeline = _with_config(PipelineDeployment, parsed.pipeline).bind(text, image, voice, recommend)
    ingress = _with_config(Ingress, parsed.ingress)
    return ingress.bind(text, image, voice, recommend, pipeline)
