"""Configuration of the content pipeline deployment (its ``user_config``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from deployments.common import StrictModel
from deployments.sql import DatabaseConfig


class StageTimeouts(StrictModel):
    """Seconds each stage may take; image and audio count from the moment the article exists."""

    article: float = Field(120.0, gt=0, le=3600)
    image: float = Field(120.0, gt=0, le=3600)
    audio: float = Field(120.0, gt=0, le=3600)
    recommendations: float = Field(10.0, gt=0, le=3600)


class RelayConfig(StrictModel):
    """How each pipeline replica delivers what the catalog owes other services (the outbox)."""

    interval_s: float = Field(1.0, gt=0, le=600, description="How often the relay looks for entries due.")
    batch: int = Field(50, ge=1, le=1000, description="Entries delivered in one call.")
    retry_s: float = Field(1.0, gt=0, le=3600, description="Wait before the first retry; doubles after each failure.")
    max_retry_s: float = Field(60.0, gt=0, le=86400, description="The longest wait between retries.")
    claim_s: float = Field(30.0, gt=0, le=3600, description="How long an entry being delivered is left to one replica.")


class NarrationConfig(StrictModel):
    """How the streamed composition reads the article aloud while it is written: the title first, then the body
    in parts of whole sentences, each sent to the voice service as soon as it is complete."""

    min_chars: int = Field(
        40,
        ge=1,
        le=2000,
        description="A part is sent once it ends a sentence and holds at least this many characters (shorter "
        "sentences wait to join the next one: fewer calls, steadier prosody).",
    )
    max_chars: int = Field(
        240,
        ge=20,
        le=2000,
        description="A sentence still open at this many characters is cut at its last clause (or word) and sent, "
        "so a run-on sentence never holds the voice back.",
    )
    first_chars: int = Field(
        48,
        ge=10,
        le=2000,
        description="The first part (usually the title) is cut at its last word before this many characters: the "
        "voice's time grows with the text, and the first sound is what a listener waits for.",
    )
    in_flight: int = Field(
        2,
        ge=1,
        le=16,
        description="Parts of one content at the voice service at once (their audio is still sent on in order): "
        "more lets several voice replicas work on one content; one keeps a content from crowding others out.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> NarrationConfig:
        if self.max_chars < self.min_chars:
            raise ValueError("max_chars must be at least min_chars")
        return self


class ImageStageConfig(StrictModel):
    """When the streamed composition starts the image."""

    prompt_from: Literal["first_sentence", "article"] = Field(
        "first_sentence",
        description="`first_sentence`: as soon as the title and the body's first sentence exist (what the image "
        "service's illustration prompt reads: its `{title}` and `{summary}`); `article`: once the article is "
        "complete (for a prompt template that reads more).",
    )


class PipelineConfig(StrictModel):
    """Configuration of the pipeline deployment (its ``user_config``)."""

    catalog_url: str = Field(
        "sqlite:///data/content.db",
        description="SQLAlchemy URL of the content catalog, or `env:NAME` to read it from the environment (a "
        "secret); relative SQLite paths resolve against the project root.",
    )
    asset_url: str = Field(
        "data/assets", description="fsspec URL or folder for images and audio (`s3://bucket/prefix` in a cluster)."
    )
    timeouts_s: StageTimeouts = Field(default_factory=StageTimeouts)
    composition: Literal["streamed", "sequential"] = Field(
        "streamed",
        description="`streamed`: the voice reads each sentence while the next is written, and the image starts "
        "from the article's first sentence (docs/streaming.md); `sequential`: image and voice start once the whole "
        "article exists (for comparison, and for a text service that cannot stream).",
    )
    narration: NarrationConfig = Field(default_factory=NarrationConfig, description="Streamed composition: the voice.")
    image: ImageStageConfig = Field(default_factory=ImageStageConfig, description="Streamed composition: the image.")
    recommendations_k: int = Field(5, ge=1, le=100, description="Recommendations returned with each content.")
    retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Times a stage call lost with a dying replica is sent again (within the stage's timeout; the "
        "resend waits for a live or replacement replica).",
    )
    register_items: bool = Field(True, description="Make stored content an item the recommender knows.")
    by_value_calls: bool = Field(
        True,
        description="Calls to the services that take them by value (`text`: the article's token stream) go over "
        "their replicas' gRPC servers with results by value; false: as Ray actor tasks through the object store, "
        "Serve's default (as the ingress's switch of the same name).",
    )
    database: DatabaseConfig = Field(
        default_factory=DatabaseConfig, description="This replica's connection pool to `catalog_url`."
    )
    relay: RelayConfig = Field(default_factory=RelayConfig, description="Delivery of the outbox.")
    key_lease_s: float = Field(
        30.0,
        ge=1,
        le=86400,
        description="How long an idempotency key stays with the attempt making its content after that attempt "
        "last renewed it (it renews every third of this while it runs): a retry with the key meanwhile gets 409, "
        "unless the ingress resends it because that attempt's replica died; an attempt whose replica died without "
        "anyone knowing frees the key within this.",
    )
    retry_after_s: int = Field(
        5, ge=1, le=600, description="`Retry-After` of a 409 while another attempt makes the same key's content."
    )
