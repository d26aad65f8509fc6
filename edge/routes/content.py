"""Content routes: make content (plain or streamed), list it, read one, and fetch its image and audio."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.errors import NotFound, ServiceError, from_exception
from deployments.registry import PIPELINE
from edge.access import Principal
from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.ingress import Ingress
from edge.openai.protocol import ErrorDetail, ErrorResponse
from edge.openai.streaming import SSE_HEADERS
from graphs.schemas import CONTENT_ID, STAGES, ContentPage, ContentRecord, ContentRequest, StageVariant

router = APIRouter(tags=["Content"])
ContentIdParam = Annotated[str, Path(pattern=CONTENT_ID.pattern, description="A content id (`c` + 32 hex).")]


class ContentFailure(ContentRecord):
    """The record of content that could not be made (no article), with the error."""

    error: ErrorDetail


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key (from the same caller) always stands for the same content: sent again, it "
        "answers the stored record, or 409 while that content is still being made; with another body, 400.",
    ),
]
FAILED = {"model": ContentFailure | ErrorResponse, "description": "The content could not be made; why, and its record."}


async def _sse(stream: Any, ingress: Ingress, caller: Principal) -> AsyncIterator[str]:
    """Server-sent events from the pipeline's event stream; a broken stream ends with a `failed` event. Audio
    and images are charged to the caller as they go out (a client that leaves still pays for what it got)."""
    try:
        async for item in stream:
            event, data = item["event"], item["data"]
            yield f"event: {event}\ndata: {json.dumps(data)}\n\n"
            if event == "audio_chunk":
                await ingress.limiter.charge(caller, audio_s=data["duration_s"])
            elif event == "image" and data.get("ok"):
                await ingress.limiter.charge(caller, images=1)
    except Exception as exc:
        failure = from_exception(exc, PIPELINE)
        yield f"event: failed\ndata: {json.dumps({'error': failure.message})}\n\n"


@router.post(
    "/v1/content",
    response_model=ContentRecord,
    operation_id="createContent",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "The record, or SSE events with `stream`.",
            "links": {
                "GetContent": {
                    "operationId": "getContent",
                    "parameters": {"content_id": "$response.body#/id"},
                    "description": "The stored record of the content just made.",
                }
            },
        },
        **error_responses(400, 409, 500, 502, 503, 504),
        **{status: FAILED for status in (400, 500, 502, 503, 504)},
    },
)
async def create_content(
    body: ContentRequest,
    ingress: IngressDep,
    caller: CallerDep,
    user: UserHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    # A user key makes content as its own user, whatever the body says.
    body = body.model_copy(update={"user_id": caller.user(body.user_id or user)})
    variants = stage_variants(ingress, body.user_id)
    # Every content request is made under a key (the client's, scoped to its caller, or one of our own), so a
    # request whose pipeline replica died can be sent again without ever making a second content.
    key = f"{caller.counter}:{idempotency_key}" if idempotency_key else f"auto:{uuid.uuid4().hex}"
    if body.stream:
        stream = ingress.handle(PIPELINE).options(stream=True).create_stream.remote(body, variants, key)
        return StreamingResponse(_sse(stream, ingress, caller), media_type="text/event-stream", headers=SSE_HEADERS)
    try:  # a resend (the attempt's replica died) takes over the key of that attempt
        record = await ingress.call(
            PIPELINE, "create", body, variants, key, False, resend_args=(body, variants, key, True)
        )
    except ServiceError as exc:
        if exc.record is not None:  # no article: answer with the failed record
            _count_stages(ingress, exc.record)
            content = {**exc.record.model_dump(mode="json"), **exc.body()}
            return JSONResponse(status_code=exc.status, content=content, headers=exc.headers())
        raise
    _count_stages(ingress, record)
    await ingress.limiter.charge(caller, images=1 if record.image_url else 0, audio_s=record.audio_duration_s or 0.0)
    return record


def stage_variants(ingress: Ingress, user_id: str | None) -> dict[str, StageVariant]:
    """The experiment variant each stage runs on for this user (sticky by user id), by stage."""
    variants = {}
    for stage, service in STAGES.items():
        assignment = ingress.router.assign(service, user_id, None)
        if assignment is not None:
            variants[stage] = StageVariant(deployment=assignment.deployment, **assignment.tag())
    return variants


def _count_stages(ingress: Ingress, record: ContentRecord) -> None:
    """Each stage that ran on a variant counts for it, by the stage's time and outcome (as the record has them)."""
    for stage, tag in record.variants.items():
        if stage in record.timings_ms:
            ok = stage not in record.errors
            ingress.stats.record(tag.experiment, tag.variant, record.timings_ms[stage] / 1000, ok)


@router.get("/v1/content", response_model=ContentPage, responses=error_responses(503, 504))
async def list_content(
    ingress: IngressDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ContentPage:
    return await ingress.call(PIPELINE, "list_records", limit, offset)


@router.get(
    "/v1/content/{content_id}",
    response_model=ContentRecord,
    operation_id="getContent",
    responses=error_responses(404, 503, 504),
)
async def get_content(content_id: ContentIdParam, ingress: IngressDep) -> ContentRecord:
    record = await ingress.call(PIPELINE, "get_record", content_id)
    if record is None:
        raise NotFound(f"content {content_id!r} not found", "content_id")
    return record


@router.get(
    "/v1/content/{content_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The PNG."}, **error_responses(404, 503, 504)},
)
async def content_image(content_id: ContentIdParam, ingress: IngressDep) -> Response:
    return await _asset(ingress, content_id, "image", "image/png")


@router.get(
    "/v1/content/{content_id}/audio",
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}}, "description": "The WAV."}, **error_responses(404, 503, 504)},
)
async def content_audio(content_id: ContentIdParam, ingress: IngressDep) -> Response:
    return await _asset(ingress, content_id, "audio", "audio/wav")


async def _asset(ingress: Ingress, content_id: str, kind: str, media_type: str) -> Response:
    data = await ingress.call(PIPELINE, "get_asset", content_id, kind)
    if data is None:
        raise NotFound(f"content {content_id!r} has no {kind}", "content_id")
    return Response(content=data, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
