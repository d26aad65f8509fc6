"""One content in the making: the context every stage of the pipeline reads and adds to (both compositions)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ray.serve.handle import DeploymentHandle

from deployments.recommend import RecommendRequest
from deployments.text import Article, ArticleRequest
from graphs.schemas import ContentImageOptions, ContentRecord, ContentRequest, ContentVoiceOptions

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]  # sends one event of a streamed content (or drops it)


@dataclass
class Making:
    """One content in the making: what every stage reads and adds to."""

    request: ContentRequest
    record: ContentRecord
    emit: Emit
    handles: dict[str, DeploymentHandle]  # stage -> the deployment that makes it (an experiment variant, or not)
    # The article's deployment as its token stream is read: by value when the text service takes calls so
    # (``CallHandles``); ``handles`` stay by reference, since the sequential composition chains the article's
    # response into the image and voice calls, which takes an object reference.
    article_stream: DeploymentHandle
    started: float
    article_request: ArticleRequest
    image_options: ContentImageOptions
    voice_options: ContentVoiceOptions
    recommend_request: RecommendRequest
    chained: dict[str, Any] = field(default_factory=dict)  # image and audio calls chained on the article
    first_recommendations: Any = None
    article: Article | None = None
    results: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None  # ends (state done) in the transaction that stores the content


def elapsed_ms(since: float) -> float:
    """Milliseconds since a ``time.perf_counter()`` reading, as records keep them."""
    return round((time.perf_counter() - since) * 1000, 1)
