"""The content pipeline: one request writes an article, makes its image and audio, stores it, recommends more.

A deployment of its own (it owns the content catalog and the asset store, and scales apart from the ingress),
composed with the four model services by ``DeploymentHandle``s::

    text.write_article ──► image.illustrate ─┐
            │          └─► voice.narrate ────┼──► store (assets, then record) ──► recommend.add_items
            └ (in parallel) recommend.recommend ┘

The article's ``DeploymentResponse`` is handed straight to the image and voice calls, so they start the moment
the article exists without the pipeline relaying it. Every stage has a timeout. Image, audio and recommendations
are optional: when one fails or times out the record is ``partial`` and names the stage in ``errors``. Without an
article there is nothing to build on: the request fails clearly and nothing is stored.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from pydantic import Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import StrictModel
from deployments.image import ImageOptions, ImageResult
from deployments.recommend import ID_PATTERN, MAX_ITEM_TEXT, ItemIn, Recommendations, RecommendRequest, ScoredItem
from deployments.telemetry import telemetry
from deployments.text import Article, ArticleLength, ArticleRequest
from deployments.voice import VoiceOptions, VoiceResult
from graphs.calls import CallError, call_service
from graphs.errors import CallFailure, classify
from graphs.experiments import Assignment
from graphs.storage import CONTENT_ID, AssetStore, ContentCatalog, asset_key, new_content_id

logger = logging.getLogger("content_studio.pipeline")


# --- config and schemas -----------------------------------------------------------------------------------
class StageTimeouts(StrictModel):
    """Seconds each stage may take; image and audio count from the moment the article exists."""

    article: float = Field(120.0, gt=0, le=3600)
    image: float = Field(120.0, gt=0, le=3600)
    audio: float = Field(120.0, gt=0, le=3600)
    recommendations: float = Field(10.0, gt=0, le=3600)


class PipelineConfig(StrictModel):
    """Configuration of the pipeline deployment (its ``user_config``)."""

    catalog_url: str = Field(
        "sqlite:///data/content.db",
        description="SQLAlchemy URL of the content catalog (relative SQLite paths resolve against the project root).",
    )
    asset_url: str = Field(
        "data/assets", description="fsspec URL or folder for images and audio (`s3://bucket/prefix` in a cluster)."
    )
    timeouts_s: StageTimeouts = Field(default_factory=StageTimeouts)
    recommendations_k: int = Field(5, ge=1, le=100, description="Recommendations returned with each content.")
    retries: int = Field(1, ge=0, le=5, description="Times a stage call lost with a dying replica is sent again.")
    register_items: bool = Field(True, description="Make stored content an item the recommender knows.")


class ContentImageOptions(ImageOptions):
    n: int = Field(1, ge=1, le=1, description="One image per content.")


class ContentVoiceOptions(VoiceOptions):
    response_format: Literal["wav"] = Field("wav", description="Stored audio is WAV.")


class ContentRequest(StrictModel):
    topic: str = Field(min_length=1, max_length=500, description="What the article is about.")
    user_id: str | None = Field(None, pattern=ID_PATTERN, description="Who asks; recommendations are for them.")
    style: str | None = Field(None, max_length=100, description="e.g. `playful`, `news`, `watercolor`.")
    length: ArticleLength = "short"
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seeds the article, image and voice.")
    image: ContentImageOptions = Field(default_factory=ContentImageOptions)
    voice: ContentVoiceOptions = Field(default_factory=ContentVoiceOptions)
    stream: bool = Field(False, description="Answer with server-sent events as the content is made.")

    @field_validator("topic")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


class ArticleOut(StrictModel):
    title: str
    body: str


class VariantTag(StrictModel):
    experiment: str
    variant: str


Routes = dict[str, Assignment]  # service -> the experiment variant its stage runs on
STAGE_SERVICES = ("text", "image", "voice")
STAGE_OF = {"text": "article", "image": "image", "voice": "audio"}


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


class PipelineFailed(Exception):
    """The article stage failed: there is no content. Carries the record (status failed) and the failure."""

    def __init__(self, record: ContentRecord, failure: CallFailure) -> None:
        super().__init__(failure.message)
        self.record, self.failure = record, failure

    def __reduce__(self):
        return (type(self), (self.record, self.failure))


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


async def _no_events(event: str, data: dict[str, Any]) -> None:
    return None


# --- the pipeline -----------------------------------------------------------------------------------------
class ContentPipeline:
    """Runs the stages over the four services' handles and keeps what they made."""

    def __init__(
        self,
        text: DeploymentHandle,
        image: DeploymentHandle,
        voice: DeploymentHandle,
        recommend: DeploymentHandle,
        config: dict[str, Any] | None = None,
        variants: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self.recommend = recommend
        # Text, image and voice by deployment name, with experiment variants (the ingress picks per request).
        self.deployments: dict[str, DeploymentHandle] = {
            "text": text,
            "image": image,
            "voice": voice,
            **(variants or {}),
        }
        self.config = PipelineConfig.model_validate(config or {})
        self._catalog: ContentCatalog | None = None  # opened by reconfigure, or on first use
        self._assets: AssetStore | None = None
        self._stores_lock = threading.Lock()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        new = PipelineConfig.model_validate(user_config or {})
        with self._stores_lock:
            if self._catalog is None or new.catalog_url != self.config.catalog_url:
                self._catalog = ContentCatalog(new.catalog_url)
            if self._assets is None or new.asset_url != self.config.asset_url:
                self._assets = AssetStore(new.asset_url)
            self.config = new

    @property
    def catalog(self) -> ContentCatalog:
        with self._stores_lock:  # first use may come from several threads at once
            if self._catalog is None:
                self._catalog = ContentCatalog(self.config.catalog_url)
            return self._catalog

    @property
    def assets(self) -> AssetStore:
        with self._stores_lock:
            if self._assets is None:
                self._assets = AssetStore(self.config.asset_url)
            return self._assets

    # --- creating -----------------------------------------------------------------------------------------
    async def create(self, request: ContentRequest, routes: Routes | None = None) -> ContentRecord:
        """Make one piece of content; raises ``PipelineFailed`` when there is no article. ``routes`` names the
        experiment variant (deployment) each service's stage runs on."""
        return await self._run(request, _no_events, routes or {})

    @staticmethod
    def _observe(record: ContentRecord) -> None:
        telemetry.count("content_studio_pipeline_results", status=record.status)
        for stage, ms in record.timings_ms.items():
            telemetry.observe("content_studio_pipeline_stage_seconds", ms / 1000, stage=stage)
        for stage in record.errors:
            telemetry.count("content_studio_pipeline_stage_errors", stage=stage)

    async def create_stream(
        self, request: ContentRequest, routes: Routes | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The same as ``create``, as events: ``started``, ``token``s, ``article``, one per finished stage,
        then ``complete`` (or ``failed``) with the whole record."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def emit(event: str, data: dict[str, Any]) -> None:
            await queue.put({"event": event, "data": data})

        async def run() -> None:
            try:
                record = await self._run(request, emit, routes or {})
                await emit("complete", record.model_dump(mode="json"))
            except PipelineFailed as exc:
                await emit("failed", {**exc.record.model_dump(mode="json"), "error": exc.failure.message})
            except Exception as exc:  # never leave a stream hanging without a last word
                logger.exception("pipeline failed")
                await emit("failed", {"error": f"{type(exc).__name__}: {exc}"})
            finally:
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            if not task.done():  # the client went away: stop making content for nobody
                task.cancel()

    async def _run(self, request: ContentRequest, emit: Emit, routes: Routes) -> ContentRecord:
        try:
            record = await self._make(request, emit, routes)
        except PipelineFailed as exc:
            self._observe(exc.record)
            raise
        self._observe(record)
        return record

    async def _make(self, request: ContentRequest, emit: Emit, routes: Routes) -> ContentRecord:
        cfg = self.config
        text, image, voice = (self.deployments[routes[s].deployment if s in routes else s] for s in STAGE_SERVICES)
        started = time.perf_counter()
        content_id = new_content_id()
        record = ContentRecord(
            id=content_id,
            status="failed",
            topic=request.topic,
            user_id=request.user_id,
            style=request.style,
            length=request.length,
            variants={STAGE_OF[service]: VariantTag(**a.tag()) for service, a in routes.items()},
            created_at=time.time(),
        )
        await emit("started", {"id": content_id})
        article_request = ArticleRequest(
            topic=request.topic, style=request.style, length=request.length, seed=request.seed
        )
        image_options = request.image
        if image_options.seed is None:
            image_options = image_options.model_copy(update={"seed": request.seed})
        voice_options = request.voice
        if voice_options.seed is None:
            voice_options = voice_options.model_copy(update={"seed": request.seed})
        recommend_request = RecommendRequest(user_id=request.user_id or "anonymous", k=cfg.recommendations_k)
        recommendations = self.recommend.recommend.remote(recommend_request)

        # Stage 1: the article. Streamed token by token when asked, else chained straight into image and voice:
        # their calls get the article's DeploymentResponse and start the moment it resolves. A request lost with
        # a dying text replica is sent again (with fresh chained calls), within the stage's timeout.
        chained: dict[str, Any] = {}

        def start_article() -> Any:
            for call in chained.values():
                call.cancel()
            article_call = text.write_article.remote(article_request)
            chained["image"] = image.illustrate.remote(article_call, image_options, request.style)
            chained["audio"] = voice.narrate.remote(article_call, voice_options)
            return article_call

        try:
            if request.stream:
                article = await self._stream_article(text, article_request, emit)
            else:
                article = await call_service(start_article, "text", cfg.timeouts_s.article, cfg.retries)
        except Exception as exc:
            failure = exc.failure if isinstance(exc, CallError) else classify(exc, "text", cfg.timeouts_s.article)
            for call in (*chained.values(), recommendations):
                call.cancel()
            record.errors["article"] = failure.message
            record.timings_ms["article"] = _ms(started)
            raise PipelineFailed(record, failure) from None
        record.timings_ms["article"] = _ms(started)
        record.article = ArticleOut(title=article.title, body=article.body)
        record.models["article"] = article.model
        await emit("article", {"title": article.title, "body": article.body, "ms": record.timings_ms["article"]})

        # Stage 2: image, audio and recommendations, each with its own timeout, reported as each finishes.
        # A retry (after a replica died) sends the article itself rather than the spent response.
        media_started = time.perf_counter()
        fresh = {
            "image": lambda: image.illustrate.remote(article, image_options, request.style),
            "audio": lambda: voice.narrate.remote(article, voice_options),
            "recommendations": lambda: self.recommend.recommend.remote(recommend_request),
        }
        first = {**chained, "recommendations": recommendations}
        services = {"image": "image", "audio": "voice", "recommendations": "recommend"}
        results: dict[str, Any] = {}

        async def stage(name: str) -> None:
            calls = iter([first.get(name)])

            def make_call() -> Any:
                return next(calls, None) or fresh[name]()

            try:
                limit = getattr(cfg.timeouts_s, name)
                results[name] = await call_service(make_call, services[name], limit, cfg.retries)
            except CallError as exc:
                record.errors[name] = exc.failure.message
            record.timings_ms[name] = _ms(media_started)
            event: dict[str, Any] = {"ok": name in results, "ms": record.timings_ms[name]}
            if name in record.errors:
                event["error"] = record.errors[name]
            await emit(name, event)

        await asyncio.gather(*(stage(name) for name in fresh))

        # Stage 3: store the assets, then the record (so a record never points at a missing asset).
        store_started = time.perf_counter()
        image: ImageResult | None = results.get("image")
        audio: VoiceResult | None = results.get("audio")
        recs: Recommendations | None = results.get("recommendations")
        if image is not None:
            record.image_url, record.image_prompt = f"/v1/content/{content_id}/image", image.prompt
            record.models["image"] = image.model
        if audio is not None:
            record.audio_url, record.audio_duration_s = f"/v1/content/{content_id}/audio", audio.duration_s
            record.models["audio"] = audio.model
        if recs is not None:
            record.recommendations = recs.items
        record.status = "partial" if record.errors else "complete"
        try:
            await asyncio.to_thread(self._store, record, image, audio)
        except Exception as exc:
            logger.exception("storing content %s failed", content_id)
            failure = CallFailure(500, f"storing the content failed: {type(exc).__name__}: {exc}")
            record.status, record.errors["store"] = "failed", failure.message
            raise PipelineFailed(record, failure) from None
        record.timings_ms["store"] = _ms(store_started)

        # Stage 4: the stored content becomes an item users can interact with and be recommended.
        if cfg.register_items:
            text = f"{request.topic}\n{article.body}"[:MAX_ITEM_TEXT]
            item = [ItemIn(item_id=content_id, title=article.title, text=text)]  # its text: cold-start similarity
            try:  # registering an item twice is harmless (known items stay as they are): retry freely
                limit = cfg.timeouts_s.recommendations
                await call_service(lambda: self.recommend.add_items.remote(item), "recommend", limit, cfg.retries)
            except CallError as exc:
                record.errors["register"] = exc.failure.message
                record.status = "partial"
        record.timings_ms["total"] = _ms(started)
        await asyncio.to_thread(self.catalog.update, record.model_dump(mode="json"))  # GET answers what POST did
        return record

    async def _stream_article(self, text: DeploymentHandle, request: ArticleRequest, emit: Emit) -> Article:
        stream = text.options(stream=True).write_article_stream.remote(request)
        article: Article | None = None
        try:
            async with asyncio.timeout(self.config.timeouts_s.article):
                async for item in stream:
                    if isinstance(item, str):
                        await emit("token", {"text": item})
                    else:
                        article = item
        finally:
            if article is None:
                stream.cancel()
        if article is None:
            raise RuntimeError("the text service ended its stream without an article")
        return article

    def _store(self, record: ContentRecord, image: ImageResult | None, audio: VoiceResult | None) -> None:
        if image is not None:
            self.assets.put(asset_key(record.id, "image"), image.images[0])
        if audio is not None:
            self.assets.put(asset_key(record.id, "audio"), audio.audio)
        self.catalog.add(record.model_dump(mode="json"))

    # --- reading ------------------------------------------------------------------------------------------
    def get(self, content_id: str) -> ContentRecord | None:
        if not CONTENT_ID.match(content_id):
            return None
        stored = self.catalog.get(content_id)
        return ContentRecord.model_validate(stored) if stored else None

    def page(self, limit: int, offset: int) -> ContentPage:
        records, total = self.catalog.page(limit, offset)
        return ContentPage(
            items=[ContentRecord.model_validate(r) for r in records], total=total, limit=limit, offset=offset
        )

    def asset(self, content_id: str, kind: Literal["image", "audio"]) -> bytes | None:
        """An asset of stored content, looked up through its record: a path never comes from the request."""
        record = self.get(content_id)
        if record is None or (record.image_url if kind == "image" else record.audio_url) is None:
            return None
        return self.assets.get(asset_key(content_id, kind))


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="pipeline")
class PipelineDeployment(ContentPipeline):
    """The pipeline as a deployment; reads go to a thread so the event loop keeps serving."""

    async def experiment_engagement(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per experiment variant: stored content it made, and interactions with that content."""
        made = await asyncio.to_thread(self.catalog.variant_contents)
        ids = sorted({content_id for _, _, content_id in made})
        counts: dict[str, int] = await self.recommend.interaction_counts.remote(ids) if ids else {}
        out: dict[str, dict[str, dict[str, int]]] = {}
        for experiment, variant, content_id in made:
            entry = out.setdefault(experiment, {}).setdefault(variant, {"contents": 0, "interactions": 0})
            entry["contents"] += 1
            entry["interactions"] += counts.get(content_id, 0)
        return out

    async def get_record(self, content_id: str) -> ContentRecord | None:
        return await asyncio.to_thread(self.get, content_id)

    async def list_records(self, limit: int, offset: int) -> ContentPage:
        return await asyncio.to_thread(self.page, limit, offset)

    async def get_asset(self, content_id: str, kind: Literal["image", "audio"]) -> bytes | None:
        return await asyncio.to_thread(self.asset, content_id, kind)
