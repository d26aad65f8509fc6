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

Registering the content with the recommender is eventually consistent, without a distributed transaction: the
record and an outbox entry are written in one transaction; the pipeline then delivers the entry at once, and a
relay in every pipeline replica delivers whatever is still pending (the recommender was down, the replica died),
with back-off, until the recommender has it. Registering is idempotent, so an entry delivered twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import SEED_MAX, StrictModel
from deployments.image import ImageOptions, ImageResult
from deployments.recommend import ID_PATTERN, MAX_ITEM_TEXT, ItemIn, Recommendations, RecommendRequest, ScoredItem
from deployments.sql import DatabaseConfig, StoreUnavailable
from deployments.telemetry import telemetry
from deployments.text import Article, ArticleDelta, ArticleLength, ArticleRequest
from deployments.voice import VoiceOptions, VoiceResult
from graphs.calls import call_service
from graphs.errors import ServiceError, classify
from graphs.experiments import Assignment
from graphs.storage import CONTENT_ID, AssetStore, ContentCatalog, OutboxEntry, asset_key, new_content_id

logger = logging.getLogger("content_studio.pipeline")


# --- config and schemas -----------------------------------------------------------------------------------
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
    recommendations_k: int = Field(5, ge=1, le=100, description="Recommendations returned with each content.")
    retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Times a stage call lost with a dying replica is sent again (within the stage's timeout; the "
        "resend waits for a live or replacement replica).",
    )
    register_items: bool = Field(True, description="Make stored content an item the recommender knows.")
    database: DatabaseConfig = Field(
        default_factory=DatabaseConfig, description="This replica's connection pool to `catalog_url`."
    )
    relay: RelayConfig = Field(default_factory=RelayConfig, description="Delivery of the outbox.")
    key_lease_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="How long an idempotency key stays with the attempt making its content; a retry with the key "
        "meanwhile gets 409, unless the ingress resends it because that attempt's replica died.",
    )


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


def failed(record: ContentRecord, error: ServiceError) -> ServiceError:
    """The article stage (or storing) failed: there is no content. The error carries the failed record."""
    return ServiceError(error.status_code, error.message, error.field, error.kind, error.headers, record)


Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


async def _no_events(event: str, data: dict[str, Any]) -> None:
    return None


# --- the pipeline -----------------------------------------------------------------------------------------
@dataclass
class Making:
    """One content in the making: what every stage reads and adds to."""

    request: ContentRequest
    record: ContentRecord
    emit: Emit
    text: DeploymentHandle
    image: DeploymentHandle
    voice: DeploymentHandle
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


MEDIA_SERVICES = {"image": "image", "audio": "voice", "recommendations": "recommend"}


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
        self._relay: asyncio.Task[None] | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        new = PipelineConfig.model_validate(user_config or {})
        with self._stores_lock:
            if self._catalog is None or (new.catalog_url, new.database) != (
                self.config.catalog_url,
                self.config.database,
            ):
                old, self._catalog = self._catalog, ContentCatalog(new.catalog_url, new.database)
                if old is not None:
                    old.dispose()
            if self._assets is None or new.asset_url != self.config.asset_url:
                self._assets = AssetStore(new.asset_url)
            self.config = new

    @property
    def catalog(self) -> ContentCatalog:
        with self._stores_lock:  # first use may come from several threads at once
            if self._catalog is None:
                self._catalog = ContentCatalog(self.config.catalog_url, self.config.database)
            return self._catalog

    @property
    def assets(self) -> AssetStore:
        with self._stores_lock:
            if self._assets is None:
                self._assets = AssetStore(self.config.asset_url)
            return self._assets

    # --- creating -----------------------------------------------------------------------------------------
    async def create(
        self,
        request: ContentRequest,
        routes: Routes | None = None,
        key: str | None = None,
        takeover: bool = False,
    ) -> ContentRecord:
        """Make one piece of content; raises ``ServiceError`` with the failed record when there is no article.
        ``routes`` names the experiment variant (deployment) each service's stage runs on. With an idempotency
        ``key`` the same key always stands for the same content: made once, then answered from the catalog
        (409 while another attempt makes it; ``takeover`` resumes an attempt whose replica died)."""
        return await self._run(request, _no_events, routes or {}, key, takeover)

    async def create_stream(
        self, request: ContentRequest, routes: Routes | None = None, key: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The same as ``create``, as events: ``started``, ``token``s, ``article``, one per finished stage,
        then ``complete`` (or ``failed``) with the whole record."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def emit(event: str, data: dict[str, Any]) -> None:
            await queue.put({"event": event, "data": data})

        async def run() -> None:
            try:
                record = await self._run(request, emit, routes or {}, key)
                await emit("complete", record.model_dump(mode="json"))
            except ServiceError as exc:
                record = exc.record.model_dump(mode="json") if exc.record is not None else {}
                await emit("failed", {**record, "error": exc.message})
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

    async def _run(
        self, request: ContentRequest, emit: Emit, routes: Routes, key: str | None = None, takeover: bool = False
    ) -> ContentRecord:
        self.ensure_relay()
        content_id = new_content_id()
        if key is not None:
            claimed, content_id = await self._claim(request, key, content_id, takeover)
            if claimed is not None:
                return claimed
        ctx = self._begin(request, emit, routes, content_id)
        ctx.idempotency_key = key
        try:
            record = await self._make(ctx)
        except BaseException as exc:
            if key is not None:  # a failed attempt gives its key back (a stored content's key is kept)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.catalog.release_key, key)
            if isinstance(exc, ServiceError) and exc.record is not None:
                _observe(exc.record)
            raise
        _observe(record)
        return record

    async def _claim(
        self, request: ContentRequest, key: str, content_id: str, takeover: bool
    ) -> tuple[ContentRecord | None, str]:
        """What an idempotency key stands for: the stored record (made before), or the content id to make."""
        fingerprint = hashlib.sha256(request.model_dump_json(exclude={"stream"}).encode()).hexdigest()
        state, content_id, stored = await asyncio.to_thread(
            self.catalog.claim_key, key, fingerprint, content_id, self.config.key_lease_s, takeover
        )
        if state == "done" and stored is not None:
            return ContentRecord.model_validate(stored), content_id
        if state == "mismatch":
            raise ServiceError(  # 400, as Stripe answers it (the request is well-formed; the key is misused)
                400,
                "this Idempotency-Key was used with a different request: use a new key for a new request",
                "Idempotency-Key",
                "invalid_request_error",
            )
        if state == "busy":
            raise ServiceError(
                409,
                "the content of this Idempotency-Key is still being made: ask again in a moment",
                "Idempotency-Key",
                "conflict",
                {"Retry-After": "5"},
            )
        return None, content_id

    def _begin(self, request: ContentRequest, emit: Emit, routes: Routes, content_id: str | None = None) -> Making:
        """The record of a new content, and the requests of its stages (each stage seeded from the request)."""
        text, image, voice = (self.deployments[routes[s].deployment if s in routes else s] for s in STAGE_SERVICES)
        record = ContentRecord(
            id=content_id or new_content_id(),
            status="failed",
            topic=request.topic,
            user_id=request.user_id,
            style=request.style,
            length=request.length,
            variants={STAGE_OF[service]: VariantTag(**a.tag()) for service, a in routes.items()},
            created_at=time.time(),
        )
        image_options = request.image
        if image_options.seed is None:
            image_options = image_options.model_copy(update={"seed": request.seed})
        voice_options = request.voice
        if voice_options.seed is None:
            voice_options = voice_options.model_copy(update={"seed": request.seed})
        return Making(
            request=request,
            record=record,
            emit=emit,
            text=text,
            image=image,
            voice=voice,
            started=time.perf_counter(),
            article_request=ArticleRequest(
                topic=request.topic, style=request.style, length=request.length, seed=request.seed
            ),
            image_options=image_options,
            voice_options=voice_options,
            recommend_request=RecommendRequest(user_id=request.user_id or "anonymous", k=self.config.recommendations_k),
        )

    async def _make(self, ctx: Making) -> ContentRecord:
        await ctx.emit("started", {"id": ctx.record.id})
        ctx.first_recommendations = self.recommend.recommend.remote(ctx.recommend_request)  # alongside the article
        await self._write_article(ctx)
        await asyncio.gather(*(self._media_stage(ctx, name) for name in MEDIA_SERVICES))
        await self._store(ctx)
        await self._register(ctx)
        ctx.record.timings_ms["total"] = _ms(ctx.started)
        try:  # GET answers what POST did, timings included; the content itself is stored already
            await asyncio.to_thread(self.catalog.update, ctx.record.model_dump(mode="json"))
        except StoreUnavailable:
            logger.warning("content %s is stored; its final timings are not (the database went away)", ctx.record.id)
        return ctx.record

    # --- stage 1: the article -----------------------------------------------------------------------------
    async def _write_article(self, ctx: Making) -> None:
        """Streamed token by token when asked, else chained straight into image and voice: their calls get the
        article's DeploymentResponse and start the moment it resolves. A request lost with a dying text replica
        is sent again (with fresh chained calls), within the stage's timeout. No article: a failed record."""
        cfg = self.config

        def start() -> Any:
            for call in ctx.chained.values():
                call.cancel()
            article_call = ctx.text.write_article.remote(ctx.article_request)
            ctx.chained["image"] = ctx.image.illustrate.remote(article_call, ctx.image_options, ctx.request.style)
            ctx.chained["audio"] = ctx.voice.narrate.remote(article_call, ctx.voice_options)
            return article_call

        try:
            if ctx.request.stream:
                ctx.article = await self._stream_article(ctx)
            else:
                ctx.article = await call_service(start, "text", cfg.timeouts_s.article, cfg.retries)
        except Exception as exc:
            failure = exc if isinstance(exc, ServiceError) else classify(exc, "text", cfg.timeouts_s.article)
            for call in (*ctx.chained.values(), ctx.first_recommendations):
                call.cancel()
            ctx.record.errors["article"] = failure.message
            ctx.record.timings_ms["article"] = _ms(ctx.started)
            raise failed(ctx.record, failure) from None
        article = ctx.article
        ctx.record.timings_ms["article"] = _ms(ctx.started)
        ctx.record.article = ArticleOut(title=article.title, body=article.body)
        ctx.record.models["article"] = article.model
        await ctx.emit(
            "article", {"title": article.title, "body": article.body, "ms": ctx.record.timings_ms["article"]}
        )

    async def _stream_article(self, ctx: Making) -> Article:
        stream = ctx.text.options(stream=True).write_article_stream.remote(ctx.article_request)
        article: Article | None = None
        try:
            async with asyncio.timeout(self.config.timeouts_s.article):
                async for item in stream:
                    if isinstance(item, ArticleDelta):
                        await ctx.emit("token", {"field": item.field, "text": item.text})
                    else:
                        article = item
        finally:
            if article is None:
                stream.cancel()
        if article is None:
            raise RuntimeError("the text service ended its stream without an article")
        return article

    # --- stage 2: image, audio and recommendations --------------------------------------------------------
    async def _media_stage(self, ctx: Making, name: str) -> None:
        """One optional stage with its own timeout (from the moment the article exists), reported as it
        finishes; a failure is named in the record's ``errors``. A retry (after a replica died) sends the
        article itself rather than the spent response."""
        cfg, article = self.config, ctx.article
        stage_started = time.perf_counter()
        fresh = {
            "image": lambda: ctx.image.illustrate.remote(article, ctx.image_options, ctx.request.style),
            "audio": lambda: ctx.voice.narrate.remote(article, ctx.voice_options),
            "recommendations": lambda: self.recommend.recommend.remote(ctx.recommend_request),
        }[name]
        calls = iter([ctx.chained.get(name) if name != "recommendations" else ctx.first_recommendations])

        def make_call() -> Any:
            return next(calls, None) or fresh()

        try:
            limit = getattr(cfg.timeouts_s, name)
            ctx.results[name] = await call_service(make_call, MEDIA_SERVICES[name], limit, cfg.retries)
        except ServiceError as exc:
            ctx.record.errors[name] = exc.message
        ctx.record.timings_ms[name] = _ms(stage_started)
        event: dict[str, Any] = {"ok": name in ctx.results, "ms": ctx.record.timings_ms[name]}
        if name in ctx.record.errors:
            event["error"] = ctx.record.errors[name]
        await ctx.emit(name, event)

    # --- stage 3: store -----------------------------------------------------------------------------------
    async def _store(self, ctx: Making) -> None:
        """Assets first, then the record with its outbox entry in one transaction (a record never points at a
        missing asset; a failure leaves at most unreferenced asset files). A database that is down is a 503."""
        record, started = ctx.record, time.perf_counter()
        image: ImageResult | None = ctx.results.get("image")
        audio: VoiceResult | None = ctx.results.get("audio")
        recs: Recommendations | None = ctx.results.get("recommendations")
        if image is not None:
            record.image_url, record.image_prompt = f"/v1/content/{record.id}/image", image.prompt
            record.models["image"] = image.model
        if audio is not None:
            record.audio_url, record.audio_duration_s = f"/v1/content/{record.id}/audio", audio.duration_s
            record.models["audio"] = audio.model
        if recs is not None:
            record.recommendations = recs.items
        record.status = "partial" if record.errors else "complete"
        try:
            await asyncio.to_thread(self._write, ctx, image, audio)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                failure = classify(exc, "catalog")
            else:
                logger.exception("storing content %s failed", record.id)
                failure = ServiceError(500, f"storing the content failed: {type(exc).__name__}: {exc}")
            record.status, record.errors["store"] = "failed", failure.message
            raise failed(record, failure) from None
        record.timings_ms["store"] = _ms(started)

    def _write(self, ctx: Making, image: ImageResult | None, audio: VoiceResult | None) -> None:
        record = ctx.record
        if image is not None:
            self.assets.put(asset_key(record.id, "image"), image.images[0])
        if audio is not None:
            self.assets.put(asset_key(record.id, "audio"), audio.audio)
        owed: list[tuple[str, dict[str, Any]]] = []
        if self.config.register_items and ctx.article is not None:
            owed.append(("register_item", self._item(ctx).model_dump()))
        self.catalog.add(
            record.model_dump(mode="json"), owed, claim_s=self.config.relay.claim_s, idempotency_key=ctx.idempotency_key
        )

    @staticmethod
    def _item(ctx: Making) -> ItemIn:
        """The content as a recommender item; its text (topic and body) drives cold-start similarity."""
        article = ctx.article
        assert article is not None
        text = f"{ctx.request.topic}\n{article.body}"[:MAX_ITEM_TEXT]
        return ItemIn(item_id=ctx.record.id, title=article.title[:500], text=text)

    # --- stage 4: register --------------------------------------------------------------------------------
    async def _register(self, ctx: Making) -> None:
        """Deliver the outbox entry now; if the recommender cannot take it, the relay delivers it later."""
        if not self.config.register_items:
            return
        started = time.perf_counter()
        entries = await asyncio.to_thread(self.catalog.owed_by, ctx.record.id)
        delivered = await self._deliver(entries)
        ctx.record.timings_ms["register"] = _ms(started)
        if not delivered:
            logger.warning("content %s is stored; the recommender learns of it when it is back", ctx.record.id)

    async def _deliver(self, entries: list[OutboxEntry]) -> bool:
        items = [ItemIn.model_validate(e.payload) for e in entries if e.kind == "register_item"]
        if not entries:
            return True
        relay = self.config.relay
        try:
            limit = self.config.timeouts_s.recommendations
            await call_service(lambda: self.recommend.add_items.remote(items), "recommend", limit, self.config.retries)
        except ServiceError as exc:
            for entry in entries:
                wait = min(relay.max_retry_s, relay.retry_s * 2**entry.attempts)
                await asyncio.to_thread(self.catalog.failed, entry, exc.message, wait)
            return False
        await asyncio.to_thread(self.catalog.delivered, [e.id for e in entries])
        return True

    # --- the relay ----------------------------------------------------------------------------------------
    def ensure_relay(self) -> None:
        """Start this replica's relay on the running loop (first request or health check), once."""
        if self._relay is None or self._relay.done():
            self._relay = asyncio.get_running_loop().create_task(self._relay_loop())

    async def _relay_loop(self) -> None:
        while True:
            delivered = 0
            try:
                delivered = await self.relay_once()
            except StoreUnavailable:
                logger.warning("the outbox relay waits for the catalog database")
            except Exception:  # the relay must outlive a bad round
                logger.exception("outbox relay round failed")
            if delivered < self.config.relay.batch:
                await asyncio.sleep(self.config.relay.interval_s)

    async def relay_once(self) -> int:
        """Deliver the entries that are due (claimed, so another replica's relay skips them); how many."""
        relay = self.config.relay
        entries = await asyncio.to_thread(self.catalog.claim_due, relay.batch, relay.claim_s)
        return len(entries) if entries and await self._deliver(entries) else 0

    def close(self) -> None:
        if self._relay is not None:
            self._relay.cancel()

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


def _observe(record: ContentRecord) -> None:
    telemetry.count("content_studio_pipeline_results", status=record.status)
    for stage, ms in record.timings_ms.items():
        telemetry.observe("content_studio_pipeline_stage_seconds", ms / 1000, stage=stage)
    for stage in record.errors:
        telemetry.count("content_studio_pipeline_stage_errors", stage=stage)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="pipeline")
class PipelineDeployment(ContentPipeline):
    """The pipeline as a deployment; reads go to a thread so the event loop keeps serving."""

    async def check_health(self) -> None:
        """Serve's periodic probe keeps the outbox relay running even on a replica no request reached yet."""
        self.ensure_relay()

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

    async def outbox(self, content_id: str | None = None) -> dict[str, int]:
        """Delivered and pending outbox entries (of one content, or all): what the recommender is still owed."""
        return await asyncio.to_thread(self.catalog.outbox_state, content_id)
