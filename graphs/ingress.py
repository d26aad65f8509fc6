"""The HTTP ingress: OpenAI-compatible routes and recommendation routes over the four model deployments.

The ingress owns no model. It validates input (bad input never reaches a model), calls each service through its
``DeploymentHandle`` with a per-service timeout, and turns what can go wrong into clear HTTP answers:
422/400/404 naming the field, 503 with ``Retry-After`` when a service has no replica to answer, 504 when a service
takes longer than its timeout. Nothing waits without bound.
"""

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any, ClassVar

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import StrictModel
from deployments.recommend import (
    ID_PATTERN,
    MAX_K,
    InteractionIn,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    SimilarRequest,
)
from deployments.telemetry import telemetry
from graphs.access import AccessConfig, AccessMiddleware, AccessPolicy, BodyTooLarge
from graphs.calls import CallError, call_service
from graphs.errors import CallFailure, classify
from graphs.experiments import (
    Assignment,
    ExperimentConfig,
    ExperimentList,
    ExperimentRouter,
    ExperimentStats,
    report,
    validate_experiments,
)
from graphs.pipeline import STAGE_OF, ContentPage, ContentRecord, ContentRequest, PipelineFailed
from graphs.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ModelCard,
    ModelList,
    SpeechRequest,
    Usage,
    chat_chunk,
    completion_chunk,
)
from graphs.storage import CONTENT_ID

logger = logging.getLogger("content_studio.ingress")
SERVICES = ("text", "image", "voice", "recommend")
VARIANT_HEADER = "X-Model-Variant"
UserHeader = Annotated[
    str | None,
    Header(alias="X-User-ID", max_length=256, description="End-user id for sticky experiment assignment."),
]


class ServiceTimeouts(StrictModel):
    """Seconds the ingress waits for each service before answering 504."""

    text: float = Field(120.0, gt=0, le=3600)
    image: float = Field(120.0, gt=0, le=3600)
    voice: float = Field(120.0, gt=0, le=3600)
    recommend: float = Field(10.0, gt=0, le=3600)
    recommend_retrain: float = Field(600.0, gt=0, le=7200, description="An admin retrain of the recommender.")
    pipeline: float = Field(600.0, gt=0, le=7200, description="Whole content requests (stages time out inside).")


class IngressConfig(StrictModel):
    """Configuration of the ingress deployment (its ``user_config``)."""

    timeouts_s: ServiceTimeouts = Field(default_factory=ServiceTimeouts, description="Per-service timeouts.")
    health_timeout_s: float = Field(5.0, gt=0, le=60, description="How long /v1/health waits for each service.")
    retry_after_s: int = Field(5, ge=1, le=600, description="`Retry-After` sent with 503 answers.")
    max_batch_events: int = Field(1000, ge=1, le=100_000, description="Most events in one batch ingestion.")
    retries: int = Field(
        1, ge=0, le=5, description="Times a request lost with a dying replica is sent again (no-effect calls only)."
    )
    access: AccessConfig = Field(default_factory=AccessConfig, description="API keys, CORS, body size limit.")
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict,
        description="A/B experiments by name: variants (deployments) of one service and their traffic weights.",
    )


class InteractionBatch(StrictModel):
    events: list[InteractionIn] = Field(min_length=1, max_length=100_000)


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self, status_code: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status_code, self.message, self.param, self.kind = status_code, message, param, kind
        self.headers: dict[str, str] = {}
        self.original: BaseException | None = None  # what a service raised, when this error stands for it


def error_body(message: str, param: str | None, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-\w+\[.*\]|union\[.*\])$")


def _field_name(loc: tuple[Any, ...]) -> str:
    # Union members add their type to the location (prompt.str, prompt.list[str]); people need the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and not _TYPE_TAG.match(str(p))]
    return ".".join(parts) or "body"


def validation_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    # A JSON syntax error is located by character offset, which is no field: the body itself is wrong.
    field = "body" if first.get("type") == "json_invalid" else _field_name(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg', 'invalid value')}"
    body = error_body(message, field, "invalid_request_error", "invalid_value")
    body["detail"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return JSONResponse(status_code=422, content=body)


def create_app() -> FastAPI:
    app = FastAPI(
        title="Content Studio",
        version="0.1.0",
        description="Text, image, voice and recommendation models as independent Ray Serve deployments.",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content=error_body(str(exc), "body", "request_too_large"))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(exc.message, exc.param, exc.kind),
            headers=exc.headers,
        )

    app.add_middleware(AccessMiddleware, policy=lambda: _ACCESS[0])
    return app


# The access policy in force in this replica; the ingress sets it from its config on every reconfigure.
_ACCESS: list[AccessPolicy] = [AccessPolicy()]


app = create_app()


async def _sse(stream: Any) -> AsyncIterator[str]:
    """Server-sent events from the pipeline's event stream; a broken stream ends with a `failed` event."""
    try:
        async for item in stream:
            yield f"event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"
    except Exception as exc:
        failure = classify(exc, "pipeline")
        yield f"event: failed\ndata: {json.dumps({'error': failure.message})}\n\n"


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
STUDIO_PAGE = FilePath(__file__).with_name("studio.html").read_text(encoding="utf-8")


async def _openai_sse(stream: Any, model: str, chat: bool, include_usage: bool, timeout: float) -> AsyncIterator[str]:
    """Text stream items as OpenAI chunks: deltas as they come, a last chunk with the finish reason, [DONE]."""
    chunk_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(text: str | None, finish: str | None) -> str:
        if chat:
            delta = (
                {} if text is None else ({"role": "assistant", "content": text} if text == "" else {"content": text})
            )
            body = chat_chunk(chunk_id, created, model, delta, finish)
        else:
            body = completion_chunk(chunk_id, created, model, text or "", finish)
        return f"data: {json.dumps(body)}\n\n"

    try:
        if chat:
            yield chunk("", None)  # the role first, as OpenAI does
        async with asyncio.timeout(timeout):
            async for item in stream:
                if isinstance(item, str):
                    yield chunk(item, None)
                else:
                    yield chunk(None, item.finish_reason)
                    if include_usage:
                        usage = Usage.of(item).model_dump()
                        kind = "chat.completion.chunk" if chat else "text_completion"
                        last = {"id": chunk_id, "object": kind, "created": created, "model": model}
                        yield f"data: {json.dumps({**last, 'choices': [], 'usage': usage})}\n\n"
    except Exception as exc:  # the headers are sent: the error goes in the stream, as OpenAI does
        failure = classify(exc, "text", timeout)
        yield f"data: {json.dumps(error_body(failure.message, failure.field, failure.kind))}\n\n"
    yield "data: [DONE]\n\n"


ContentIdParam = Annotated[str, Path(pattern=CONTENT_ID.pattern, description="A content id (`c` + 32 hex).")]
KParam = Annotated[int | None, Query(ge=1, le=MAX_K, description="How many items (default from config).")]


@serve.deployment(name="ingress")
@serve.ingress(app)
class Ingress:
    """Routes HTTP to the four model services; holds their handles."""

    services: ClassVar[tuple[str, ...]] = SERVICES

    def __init__(
        self,
        text: DeploymentHandle,
        image: DeploymentHandle,
        voice: DeploymentHandle,
        recommend: DeploymentHandle,
        pipeline: DeploymentHandle,
        config: dict[str, Any] | None = None,
        variants: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self.handles: dict[str, DeploymentHandle] = {
            "text": text,
            "image": image,
            "voice": voice,
            "recommend": recommend,
            "pipeline": pipeline,
            **(variants or {}),  # experiment variants: extra deployments of a service, by deployment name
        }
        self.variant_deployments = tuple(variants or {})
        self.stats = ExperimentStats()
        self.reconfigure(config or {})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = IngressConfig.model_validate(user_config or {})
        validate_experiments(config.experiments, set(self.handles) - {"recommend", "pipeline"})
        self.config = config
        self.router = ExperimentRouter(config.experiments)
        _ACCESS[0] = AccessPolicy.from_config(config.access)

    # --- calling services ---------------------------------------------------------------------------------
    async def call(
        self,
        service: str,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = True,
        deployment: str | None = None,
    ) -> Any:
        """Call one service method (on ``deployment``, an experiment variant, when given) with the service's
        timeout, retrying lost requests if it has no effects, mapping failures to HTTP errors."""
        limit = timeout if timeout is not None else getattr(self.config.timeouts_s, service)
        handle = getattr(self.handles[deployment or service], method)
        retries = self.config.retries if idempotent else 0
        try:
            return await call_service(lambda: handle.remote(*args), service, limit, retries)
        except CallError as exc:
            if exc.failure.status_code == 500:
                logger.error("%s.%s failed: %s", service, method, exc.failure.message)
            error = self._api_error(exc.failure)
            error.original = exc.original
            raise error from None

    def _api_error(self, failure: CallFailure) -> ApiError:
        error = ApiError(failure.status_code, failure.message, failure.field, failure.kind)
        if failure.status_code == 503:
            error.headers["Retry-After"] = str(self.config.retry_after_s)
        return error

    def route(self, service: str, request: Any, user_id: str | None) -> tuple[Any, Assignment | None]:
        """The experiment variant for a request, and the request as that variant's deployment takes it."""
        assignment = self.router.assign(service, user_id, getattr(request, "model", None))
        if assignment is not None:
            request = request.model_copy(update={"model": None})  # the variant serves its own model
        return request, assignment

    def count(self, assignment: Assignment | None, seconds: float, ok: bool) -> None:
        if assignment is None:
            return
        self.stats.record(assignment, seconds, ok)
        outcome = "ok" if ok else "error"
        telemetry.count("content_studio_experiment_requests", outcome=outcome, **assignment.tag())
        telemetry.observe("content_studio_experiment_request_seconds", seconds, **assignment.tag())

    async def call_routed(
        self, service: str, method: str, request: Any, user_id: str | None, response: Response | None
    ) -> tuple[Any, Assignment | None]:
        """``call`` through the service's experiment (if any); counts the variant's requests, errors, latency."""
        request, assignment = self.route(service, request, user_id)
        started, ok = time.perf_counter(), False
        try:
            result = await self.call(service, method, request, deployment=assignment and assignment.deployment)
            ok = True
        except ApiError as exc:
            ok = exc.status_code < 500  # the caller's mistake is no mark against the variant
            raise
        finally:
            self.count(assignment, time.perf_counter() - started, ok)
        if assignment is not None and response is not None:
            response.headers[VARIANT_HEADER] = assignment.variant
        return result, assignment

    @app.get("/v1/experiments", response_model=ExperimentList)
    async def experiments(self) -> ExperimentList:
        """Each experiment's variants, weights, requests, errors and latency percentiles (counted by this
        ingress replica; Prometheus has the fleet-wide series), and the content made by each variant with the
        interactions it received."""
        try:
            engagement = await self.call("pipeline", "experiment_engagement")
        except ApiError:  # engagement is a bonus: the request counts are here
            engagement = {}
        return report(self.config.experiments, self.stats.snapshot(), engagement, self.stats.since)

    # --- OpenAI-compatible routes ---------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelList)
    async def models(self) -> ModelList:
        described = await self._describe_all()
        cards = [
            ModelCard(id=info["model"], created=int(info.get("loaded_at") or 0), service=info["service"])
            for name, info in described.items()
            if info.get("status") == "ok" and name != "recommend"
        ]
        cards += [  # an experiment's public name: requests naming it are split between its variants
            ModelCard(id=e.model, created=0, service=e.service) for e in self.config.experiments.values() if e.model
        ]
        return ModelList(data=cards)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def completions(self, body: CompletionRequest, response: Response, user: UserHeader = None) -> Any:
        if body.stream:
            return await self._stream_text(body, chat=False, user_id=body.user or user)
        result, assignment = await self.call_routed("text", "generate", body.to_service(), body.user or user, response)
        return CompletionResponse.of(result).model_copy(update={"variant": assignment and assignment.variant})

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def chat_completions(self, body: ChatCompletionRequest, response: Response, user: UserHeader = None) -> Any:
        if body.stream:
            return await self._stream_text(body, chat=True, user_id=body.user or user)
        result, assignment = await self.call_routed("text", "generate", body.to_service(), body.user or user, response)
        return ChatCompletionResponse.of(result).model_copy(update={"variant": assignment and assignment.variant})

    async def _stream_text(
        self, body: CompletionRequest | ChatCompletionRequest, chat: bool, user_id: str | None
    ) -> StreamingResponse:
        """OpenAI-format SSE. The first item is awaited before answering, so a request the model rejects gets
        its 4xx (not a 200 with an error inside); a client that goes away closes the stream, which stops
        generation in the text replica."""
        limit = self.config.timeouts_s.text
        request, assignment = self.route("text", body.to_service(), user_id)
        handle = self.handles[assignment.deployment if assignment else "text"]
        stream = handle.options(stream=True).generate_stream.remote(request)
        started = time.perf_counter()
        try:
            start = await asyncio.wait_for(stream.__anext__(), timeout=limit)
        except Exception as exc:
            stream.cancel()
            error = self._api_error(classify(exc, "text", limit))
            self.count(assignment, time.perf_counter() - started, error.status_code < 500)
            raise error from None
        self.count(assignment, time.perf_counter() - started, True)  # streams count by time to first item
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _openai_sse(stream, start.model, chat, include_usage, limit)
        headers = {**_SSE_HEADERS, **({VARIANT_HEADER: assignment.variant} if assignment else {})}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/v1/images/generations", response_model=ImageGenerationResponse)
    async def images(
        self, body: ImageGenerationRequest, response: Response, user: UserHeader = None
    ) -> ImageGenerationResponse:
        result, assignment = await self.call_routed("image", "generate", body.to_service(), body.user or user, response)
        return ImageGenerationResponse.of(result).model_copy(update={"variant": assignment and assignment.variant})

    @app.post(
        "/v1/audio/speech",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}, "audio/flac": {}, "audio/pcm": {}}}},
    )
    async def speech(self, body: SpeechRequest, user: UserHeader = None) -> Response:
        result, assignment = await self.call_routed("voice", "synthesize", body.to_service(), body.user or user, None)
        headers = {
            "X-Audio-Sample-Rate": str(result.sample_rate),
            "X-Audio-Duration-S": str(result.duration_s),
            "X-Model": result.model,
            **({VARIANT_HEADER: assignment.variant} if assignment else {}),
        }
        return Response(content=result.audio, media_type=result.media_type, headers=headers)

    # --- recommendation routes ------------------------------------------------------------------------------
    @app.post("/v1/interactions", status_code=202)
    async def interactions(self, body: InteractionIn) -> dict[str, Any]:
        acks = await self.call("recommend", "record", [body], idempotent=False)
        return {"accepted": len(acks), "events": [a.model_dump() for a in acks]}

    @app.post("/v1/interactions/batch", status_code=202)
    async def interactions_batch(self, body: InteractionBatch) -> dict[str, Any]:
        if len(body.events) > self.config.max_batch_events:
            raise ApiError(413, f"at most {self.config.max_batch_events} events per batch", "events")
        acks = await self.call("recommend", "record", body.events, idempotent=False)
        return {"accepted": len(acks)}

    @app.post("/v1/recommend/retrain", response_model=RetrainReport)
    async def retrain(self) -> RetrainReport:
        """Retrain the recommender on every recorded event now (admin; 409 while a retrain runs). Every replica
        serves the new version within its `refresh_s`."""
        limit = self.config.timeouts_s.recommend_retrain
        return await self.call("recommend", "retrain", timeout=limit, idempotent=False)

    @app.get("/v1/recommendations", response_model=Recommendations)
    async def recommendations(
        self,
        user_id: Annotated[str, Query(pattern=ID_PATTERN, description="The user to recommend for.")],
        k: KParam = None,
        exclude_seen: bool = True,
    ) -> Recommendations:
        request = RecommendRequest(user_id=user_id, k=k, exclude_seen=exclude_seen)
        return await self.call("recommend", "recommend", request)

    @app.get("/v1/items/{item_id}/similar", response_model=Recommendations)
    async def similar(self, item_id: Annotated[str, Path(pattern=ID_PATTERN)], k: KParam = None) -> Recommendations:
        return await self.call("recommend", "similar", SimilarRequest(item_id=item_id, k=k))

    # --- content pipeline ---------------------------------------------------------------------------------
    @app.post(
        "/v1/content",
        response_model=ContentRecord,
        responses={200: {"content": {"text/event-stream": {}}}, 502: {"model": ContentRecord}},
    )
    async def create_content(self, body: ContentRequest, user: UserHeader = None) -> Any:
        # Each media stage runs on its experiment's variant for this user (sticky by user id).
        user_id = body.user_id or user
        routes: dict[str, Assignment] = {}
        for service in ("text", "image", "voice"):
            assignment = self.router.assign(service, user_id, None)
            if assignment is not None:
                routes[service] = assignment
        if body.stream:
            stream = self.handles["pipeline"].options(stream=True).create_stream.remote(body, routes)
            return StreamingResponse(_sse(stream), media_type="text/event-stream", headers=_SSE_HEADERS)
        try:
            record = await self.call("pipeline", "create", body, routes, idempotent=False)
        except ApiError as exc:
            if isinstance(exc.original, PipelineFailed):  # no article: answer with the failed record
                self._count_stages(routes, exc.original.record)
                content = {
                    **exc.original.record.model_dump(mode="json"),
                    **error_body(exc.message, exc.param, exc.kind),
                }
                return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)
            raise
        self._count_stages(routes, record)
        return record

    def _count_stages(self, routes: dict[str, Assignment], record: ContentRecord) -> None:
        for service, assignment in routes.items():
            stage = STAGE_OF[service]
            if stage in record.timings_ms:
                self.count(assignment, record.timings_ms[stage] / 1000, stage not in record.errors)

    @app.get("/v1/content", response_model=ContentPage)
    async def list_content(
        self,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> ContentPage:
        return await self.call("pipeline", "list_records", limit, offset)

    @app.get("/v1/content/{content_id}", response_model=ContentRecord)
    async def get_content(self, content_id: ContentIdParam) -> ContentRecord:
        record = await self.call("pipeline", "get_record", content_id)
        if record is None:
            raise ApiError(404, f"content {content_id!r} not found", "content_id")
        return record

    @app.get("/v1/content/{content_id}/image", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def content_image(self, content_id: ContentIdParam) -> Response:
        return await self._asset(content_id, "image", "image/png")

    @app.get("/v1/content/{content_id}/audio", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
    async def content_audio(self, content_id: ContentIdParam) -> Response:
        return await self._asset(content_id, "audio", "audio/wav")

    async def _asset(self, content_id: str, kind: str, media_type: str) -> Response:
        data = await self.call("pipeline", "get_asset", content_id, kind)
        if data is None:
            raise ApiError(404, f"content {content_id!r} has no {kind}", "content_id")
        return Response(content=data, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    # --- health -------------------------------------------------------------------------------------------
    async def _describe_all(self) -> dict[str, dict[str, Any]]:
        async def one(name: str) -> dict[str, Any]:
            try:
                return await self.call(name, "describe", timeout=self.config.health_timeout_s)
            except ApiError as exc:
                return {"service": name, "status": "unavailable", "error": exc.message}

        names = (*self.services, *self.variant_deployments)
        results = await asyncio.gather(*(one(name) for name in names))
        return dict(zip(names, results, strict=True))

    @app.get("/v1/health")
    async def health(self) -> JSONResponse:
        services = await self._describe_all()
        ok = all(info.get("status") == "ok" for info in services.values())
        body = {"status": "ok" if ok else "degraded", "services": services}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def studio(self) -> HTMLResponse:
        """The web studio: one self-contained page (no assets from the internet) over this API."""
        return HTMLResponse(STUDIO_PAGE)
