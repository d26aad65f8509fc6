"""What the content pipeline takes and answers: the content request, its record, and the pipeline's stages."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator

from deployments.common import SEED_MAX, StrictModel
from deployments.image import ImageOptions
from deployments.recommend import ID_PATTERN, ScoredItem
from deployments.text import ArticleLength
from deployments.voice import VoiceOptions

CONTENT_ID = re.compile(r"^c[0-9a-f]{32}$")
# Each stage of a content, and the service that makes it: the one table of the pipeline's shape.
STAGES: dict[str, str] = {"article": "text", "image": "image", "audio": "voice", "recommendations": "recommend"}
MEDIA_STAGES = ("image", "audio", "recommendations")  # optional: a failure makes the content `partial`


class ContentImageOptions(ImageOptions):
    n: int = Field(1, ge=1, le=1, description="One image per content.")


class ContentVoiceOptions(VoiceOptions):
    response_format: Literal["wav"] = Field("wav", description="Stored audio is WAV.")


class ContentRequest(StrictModel):
    topic: str = Field(min_length=1, max_length=500, description="What the article is about.")
    user_id: str | None = Field(None, pattern=ID_PATTERN, description="Who asks; recommendations are for them.")
    style: str | None = Field(None, max_length=100, description="e.g. `playful`, `news`, `watercolor`.")
    length: ArticleLength = "short"
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Seeds the article, image and voice.")
    image: ContentImageOptions = Field(default_factory=ContentImageOptions)
    voice: ContentVoiceOptions = Field(default_factory=ContentVoiceOptions)
    stream: bool = Field(False, description="Answer with server-sent events as the content is made.")

    @field_validator("topic")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


def fingerprint(request: ContentRequest) -> str:
    """What an idempotency key is checked against: the request, whether it streams or not."""
    return hashlib.sha256(request.model_dump_json(exclude={"stream"}).encode()).hexdigest()


class ArticleOut(StrictModel):
    title: str
    body: str


class VariantTag(StrictModel):
    """The experiment variant a stage ran on (recorded with the content: engagement per variant)."""

    experiment: str
    variant: str


class StageVariant(VariantTag):
    """The experiment variant a stage runs on, and the deployment that serves it (chosen by the ingress)."""

    deployment: str


class ContentRecord(StrictModel):
    id: str
    status: Literal["complete", "partial", "failed"]
    topic: str
    user_id: str | None = None
    style: str | None = None
    length: ArticleLength
    article: ArticleOut | None = None
    image_url: str | None = None
    audio_url: str | None = None
    image_prompt: str | None = None
    audio_duration_s: float | None = None
    recommendations: list[ScoredItem] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    variants: dict[str, VariantTag] = Field(
        default_factory=dict, description="Experiment variant of each stage (article, image, audio) that ran one."
    )
    created_at: float


class ContentPage(StrictModel):
    items: list[ContentRecord]
    total: int
    limit: int
    offset: int
