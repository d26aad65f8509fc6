"""The content pipeline: one request writes an article, makes its image and audio, stores it, recommends more.

A deployment of its own (it owns the content catalog and the asset store, and scales apart from the ingress),
composed with the four model services by ``DeploymentHandle``s, in one of two compositions (``composition`` in
its config). ``streamed``, the default (graphs/streamed.py): the voice reads each sentence while the next is
written and the image starts from the first sentence. ``sequential``::

    text.write_article ──► image.illustrate ─┐
            │          └─► voice.narrate ────┼──► store (assets, then record) ──► recommend.add_items
            └ (in parallel) recommend.recommend ┘

where the article's ``DeploymentResponse`` is handed straight to the image and voice calls, so they start the
moment the article exists without the pipeline relaying it. Every stage has a timeout. Image, audio and
recommendations are optional: when one fails or times out the record is ``partial`` and names the stage in
``errors``. Without an article there is nothing to build on: the request fails clearly and nothing is stored.

Registering the content with the recommender goes through the catalog's outbox (graphs/relay.py): the record and
its entry are written in one transaction, the pipeline delivers the entry at once, and the relay delivers
whatever is still pending. Past 400 lines because it is one idea: the stages of one content that both
compositions share, in the order they run, each with its timeout and its failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from ray.serve.handle import DeploymentHandle

from deployments.calls import call
from deployments.errors import Conflict, InvalidRequest, ServiceError, from_exception
from deployments.image import ImageResult
from deployments.recommend import MAX_ITEM_TEXT, ItemIn, Recommendations, RecommendRequest
from deployments.registry import CallHandles
from deployments.telemetry import telemetry
from deployments.text import Article, ArticleDelta, ArticleRequest
from deployments.voice import VoiceResult
from graphs.assets import AssetStore, asset_key
from graphs.catalog import ContentCatalog
from graphs.config import PipelineConfig
from graphs.making import Emit, Making, elapsed_ms
from graphs.relay import OutboxRelay
from graphs.schemas import (
    CONTENT_ID,
    MEDIA_STAGES,
    STAGES,
    ArticleOut,
    ContentPage,
    ContentRecord,
    ContentRequest,
    StageVariant,
    VariantTag,
    fingerprint,
)
from graphs.streamed import StreamedComposition

logger = logging.getLogger("content_studio.pipeline")


async def _no_events(event: str, data: dict[str, Any]) -> None:
    return None


class ContentPipeline:
    """Runs the stages over the services' handles and keeps what they made."""

    def __init__(self, handles: dict[str, DeploymentHandle], config: dict[str, Any] | None = None) -> None:
        # The four services and their experiment variants, by deployment name (the ingress picks per request).
        self.handles = handles
        self.calls = CallHandles(handles)
        self.config = PipelineConfig.model_validate(config or {})
        self._catalog: ContentCatalog | None = None  # opened by reconfigure, or on first use
        self._assets: AssetStore | None = None
        self._stores_lock = threading.Lock()
        self.relay = OutboxRelay(lambda: self.catalog, lambda: self.config, handles["recommend"])

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

    def close(self) -> None:
        """Stop the relay and close the catalog's connections (the replica is shutting down)."""
        self.relay.close()
        with self._stores_lock:
            if self._catalog is not None:
                self._catalog.dispose()

    # --- creating -----------------------------------------------------------------------------------------
    async def create(
        self,
        request: ContentRequest,
        variants: dict[str, StageVariant] | None = None,
        key: str | None = None,
        takeover: bool = False,
    ) -> ContentRecord:
        """Make one piece of content; raises ``ServiceError`` with the failed record when there is no article.
        ``variants`` names the experiment variant each stage runs on. With an idempotency ``key`` the same key
        always stands for the same content: made once, then answered from the catalog (409 while another attempt
        makes it; ``takeover`` resumes an attempt whose replica died)."""
        return await self._run(request, _no_events, variants or {}, key, takeover)

    async def create_stream(
        self,
        request: ContentRequest,
        variants: dict[str, StageVariant] | None = None,
        key: str | None = None,
        takeover: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """The same as ``create``, as events: ``started``, ``token``s, ``audio_chunk``s, ``article``, one per
        finished stage, then ``complete`` (or ``failed``) with the whole record."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def emit(event: str, data: dict[str, Any]) -> None:
            await queue.put({"event": event, "data": data})

        async def run() -> None:
            try:
                record = await self._run(request, emit, variants or {}, key, takeover)
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
        self,
        request: ContentRequest,
        emit: Emit,
        variants: dict[str, StageVariant],
        key: str | None = None,
        takeover: bool = False,
    ) -> ContentRecord:
        self.relay.ensure_running()
        content_id = new_content_id()
        if key is not None:
            claimed, content_id = await self._claim(request, key, content_id, takeover)
            if claimed is not None:
                return claimed
        ctx = self._begin(request, emit, variants, content_id)
        ctx.idempotency_key = key
        renewal = asyncio.create_task(self._renew_key(key, content_id)) if key is not None else None
        try:
            record = await self._make(ctx)
        except BaseException as exc:
            if key is not None:  # a failed attempt gives its key back (a stored content's key is kept)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.catalog.release_key, key)
            if isinstance(exc, ServiceError) and exc.record is not None:
                _observe(exc.record, self.config.composition)
            raise
        finally:
            if renewal is not None:
                renewal.cancel()
        _observe(record, self.config.composition)
        return record

    async def _renew_key(self, key: str, content_id: str) -> None:
        """Keep the key's claim alive while this attempt runs: if its replica dies, the claim lapses within
        ``key_lease_s`` and a resend takes the key over (no client waits on a dead attempt for long)."""
        lease = self.config.key_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            with contextlib.suppress(Exception):  # a database hiccup: the next renewal tries again
                if not await asyncio.to_thread(self.catalog.renew_key, key, content_id, lease):
                    return

    async def _claim(
        self, request: ContentRequest, key: str, content_id: str, takeover: bool
    ) -> tuple[ContentRecord | None, str]:
        """What an idempotency key stands for: the stored record (made before), or the content id to make."""
        state, content_id, stored = await asyncio.to_thread(
            self.catalog.claim_key, key, fingerprint(request), content_id, self.config.key_lease_s, takeover
        )
        if state == "done" and stored is not None:
            return ContentRecord.model_validate(stored), content_id
        if state == "mismatch":  # 400, as Stripe answers it (the request is well-formed; the key is misused)
            raise InvalidRequest(
                "this Idempotency-Key was used with a different request: use a new key for a new request",
                "Idempotency-Key",
            )
        if state == "busy":
            raise Conflict(
                "the content of this Idempotency-Key is still being made: ask again in a moment",
                "Idempotency-Key",
                retry_after_s=self.config.retry_after_s,
            )
        return None, content_id

    def _begin(self, request: ContentRequest, emit: Emit, variants: dict[str, StageVariant], content_id: str) -> Making:
        """The record of a new content, and the requests of its stages (each stage seeded from the request)."""
        deployments = {
            stage: variants[stage].deployment if stage in variants else service for stage, service in STAGES.items()
        }
        handles = {stage: self.handles[deployment] for stage, deployment in deployments.items()}
        article_stream = self.calls.get(deployments["article"], STAGES["article"], self.config.by_value_calls)
        record = ContentRecord(
            id=content_id,
            status="failed",
            topic=request.topic,
            user_id=request.user_id,
            style=request.style,
            length=request.length,
            variants={stage: VariantTag(experiment=v.experiment, variant=v.variant) for stage, v in variants.items()},
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
            handles=handles,
            article_stream=article_stream,
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
        recommend = ctx.handles["recommendations"]
        ctx.first_recommendations = recommend.recommend.remote(ctx.recommend_request)  # alongside the article
        if self.config.composition == "streamed":
            await StreamedComposition(self, ctx).run()
        else:
            await self._write_article(ctx)
            await asyncio.gather(*(self.media_stage(ctx, stage) for stage in MEDIA_STAGES))
        owed = await self._store(ctx)
        await self._register(ctx, owed)
        return ctx.record

    # --- stage 1: the article -----------------------------------------------------------------------------
    async def _write_article(self, ctx: Making) -> None:
        """Streamed token by token when asked, else chained straight into image and voice: their calls get the
        article's DeploymentResponse and start the moment it resolves. A request lost with a dying text replica
        is sent again (with fresh chained calls), within the stage's timeout. No article: a failed record."""
        cfg = self.config
        text, image, voice = (ctx.handles[stage] for stage in ("article", "image", "audio"))

        def start(_: int) -> Any:
            for chained in ctx.chained.values():
                chained.cancel()
            article_call = text.write_article.remote(ctx.article_request)
            ctx.chained["image"] = image.illustrate.remote(article_call, ctx.image_options, ctx.request.style)
            ctx.chained["audio"] = voice.narrate.remote(article_call, ctx.voice_options)
            return article_call

        try:
            if ctx.request.stream:
                ctx.article = await self._stream_article(ctx)
            else:
                ctx.article = await call(start, STAGES["article"], cfg.timeouts_s.article, cfg.retries)
        except Exception as exc:
            for pending in (*ctx.chained.values(), ctx.first_recommendations):
                pending.cancel()
            raise self.article_failed(ctx, exc) from None
        await self.article_written(ctx)

    def article_failed(self, ctx: Making, exc: BaseException) -> ServiceError:
        """No article: the failed record, named by the stage, to raise (nothing is stored)."""
        failure = from_exception(exc, STAGES["article"], self.config.timeouts_s.article)
        ctx.record.errors["article"] = failure.message
        ctx.record.timings_ms["article"] = elapsed_ms(ctx.started)
        return failure.with_record(ctx.record)

    async def article_written(self, ctx: Making) -> None:
        """The article is complete: into the record, and out as the `article` event at once."""
        article = ctx.article
        assert article is not None
        ctx.record.timings_ms["article"] = elapsed_ms(ctx.started)
        ctx.record.article = ArticleOut(title=article.title, body=article.body)
        ctx.record.models["article"] = article.model
        await ctx.emit(
            "article", {"title": article.title, "body": article.body, "ms": ctx.record.timings_ms["article"]}
        )

    async def _stream_article(self, ctx: Making) -> Article:
        stream = ctx.article_stream.options(stream=True).write_article_stream.remote(ctx.article_request)
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
    async def media_stage(self, ctx: Making, stage: str) -> None:
        """One optional stage with its own timeout (from the moment the article exists), reported as it
        finishes; a failure is named in the record's ``errors``. A resend (after a replica died) sends the
        article itself rather than the spent response."""
        cfg, article, handle = self.config, ctx.article, ctx.handles[stage]
        stage_started = time.perf_counter()
        first = ctx.chained.get(stage) if stage != "recommendations" else ctx.first_recommendations
        fresh = {
            "image": lambda: handle.illustrate.remote(article, ctx.image_options, ctx.request.style),
            "audio": lambda: handle.narrate.remote(article, ctx.voice_options),
            "recommendations": lambda: handle.recommend.remote(ctx.recommend_request),
        }[stage]

        def send(attempt: int) -> Any:
            return first if attempt == 0 and first is not None else fresh()

        try:
            ctx.results[stage] = await call(send, STAGES[stage], getattr(cfg.timeouts_s, stage), cfg.retries)
        except ServiceError as exc:
            ctx.record.errors[stage] = exc.message
        ctx.record.timings_ms[stage] = elapsed_ms(stage_started)
        event: dict[str, Any] = {"ok": stage in ctx.results, "ms": ctx.record.timings_ms[stage]}
        if stage in ctx.record.errors:
            event["error"] = ctx.record.errors[stage]
        await ctx.emit(stage, event)

    # --- stage 3: store -----------------------------------------------------------------------------------
    async def _store(self, ctx: Making) -> list[Any]:
        """Assets first, then the record with its outbox entry in one transaction (a record never points at a
        missing asset; a failure leaves at most unreferenced asset files). A database that is down is a 503.
        Returns the outbox entries written, which the pipeline delivers at once."""
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
            return await asyncio.to_thread(self._write, ctx, image, audio, started)
        except _MadeElsewhere as made:
            # Another attempt under the same key (one whose replica looked dead, and was not) stored this content
            # first: that content is the answer, and nothing of this attempt is written.
            ctx.record = ContentRecord.model_validate(made.record)
            return []
        except Exception as exc:
            if isinstance(exc, ServiceError):
                failure = exc
            else:
                logger.exception("storing content %s failed", record.id)
                failure = ServiceError(f"storing the content failed: {type(exc).__name__}: {exc}")
            for unfinished in ("store", "total"):
                record.timings_ms.pop(unfinished, None)
            record.status, record.errors["store"] = "failed", failure.message
            raise failure.with_record(record) from None

    def _write(self, ctx: Making, image: ImageResult | None, audio: VoiceResult | None, started: float) -> list[Any]:
        record = ctx.record
        self._check_not_made(ctx)
        if image is not None:
            self.assets.put(asset_key(record.id, "image"), image.images[0])
        if audio is not None:
            self.assets.put(asset_key(record.id, "audio"), audio.audio)
        owed: list[tuple[str, dict[str, Any]]] = []
        if self.config.register_items and ctx.article is not None:
            owed.append(("register_item", self._item(ctx).model_dump()))
        # The record as GET will answer it: the time to store it is all but the transaction itself.
        record.timings_ms["store"] = elapsed_ms(started)
        record.timings_ms["total"] = elapsed_ms(ctx.started)
        try:
            return self.catalog.add(
                record.model_dump(mode="json"),
                owed,
                claim_s=self.config.relay.claim_s,
                idempotency_key=ctx.idempotency_key,
            )
        except Conflict:
            self._check_not_made(ctx)  # the other attempt stored it between the check and this write
            raise

    def _check_not_made(self, ctx: Making) -> None:
        """Raise ``_MadeElsewhere`` when the content of this attempt's key is already stored (a takeover of an
        attempt that went on after all makes the same content id: never write it twice)."""
        if ctx.idempotency_key is not None:
            stored = self.catalog.get(ctx.record.id)
            if stored is not None:
                raise _MadeElsewhere(stored)

    @staticmethod
    def _item(ctx: Making) -> ItemIn:
        """The content as a recommender item; its text (topic and body) drives cold-start similarity."""
        article = ctx.article
        assert article is not None
        text = f"{ctx.request.topic}\n{article.body}"[:MAX_ITEM_TEXT]
        return ItemIn(item_id=ctx.record.id, title=article.title[:500], text=text)

    # --- stage 4: register --------------------------------------------------------------------------------
    async def _register(self, ctx: Making, owed: list[Any]) -> None:
        """Deliver the outbox entry now; if the recommender cannot take it, the relay delivers it later."""
        if not owed:
            return
        started = time.perf_counter()
        delivered = await self.relay.deliver(owed)
        telemetry.observe("content_studio_pipeline_stage_seconds", time.perf_counter() - started, stage="register")
        if not delivered:
            logger.warning("content %s is stored; the recommender learns of it when it is back", ctx.record.id)

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


class _MadeElsewhere(Exception):
    """The content of an idempotency key was stored by another attempt: ``record`` is the answer."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record["id"])
        self.record = record


def new_content_id() -> str:
    return "c" + uuid.uuid4().hex


def _observe(record: ContentRecord, composition: str) -> None:
    """The record's outcome, every timing it holds (``first_audio`` and ``first_image`` among them, from the
    start), and how much its stages overlapped."""
    telemetry.count("content_studio_pipeline_results", status=record.status)
    timings = record.timings_ms
    for stage, ms in timings.items():
        telemetry.observe("content_studio_pipeline_stage_seconds", ms / 1000, stage=stage)
    for stage in record.errors:
        telemetry.count("content_studio_pipeline_stage_errors", stage=stage)
    wall = timings.get("total", 0.0) - timings.get("store", 0.0)  # from the start to the last stage's end
    if wall > 0 and "article" in timings:
        busy = sum(timings.get(stage, 0.0) for stage in ("article", "image", "audio"))
        telemetry.observe("content_studio_pipeline_stage_overlap", busy / wall, composition=composition)
