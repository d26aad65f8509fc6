"""Content routes: make content (plain or streamed), list it, read one, and fetch its image and audio."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from graphs.errors import ServiceError, classify, error_body
from graphs.experiments import Assignment
from graphs.http import CallerDep, IngressDep, UserHeader, error_responses
from graphs.openai.protocol import ErrorDetail, ErrorResponse
from graphs.openai.streaming import SSE_HEADERS
from graphs.pipeline import STAGE_OF, ContentPage, ContentRecord, ContentRequest
from graphs.storage import CONTENT_ID

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


async def _sse(stream: Any) -> AsyncIterator[str]:
    """Server-sent events from the pipeline's event stream; a broken stream ends with a `failed` event."""
    try:
        async for item in stream:
            yield f"event: {item['event']}\ndata: {json.dumps(item['data'])}\n\n"
    except Exception as exc:
        failure = classify(exc, "pipeline")
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
    # Each media stage runs on its experiment's variant for this user (sticky by user id).
    routes: dict[str, Assignment] = {}
    for service in ("text", "image", "voice"):
        assignment = ingress.router.assign(service, body.user_id, None)
        if assignment is not None:
            routes[service] = assignment
    # Every content request is made under a key (the client's, scoped to its caller, or one of our own), so a
    # request whose pipeline replica died can be sent again without ever making a second content.
    key = f"{caller.counter}:{idempotency_key}" if idempotency_key else f"auto:{uuid.uuid4().hex}"
    if body.stream:
        stream = ingress.handles["pipeline"].options(stream=True).create_stream.remote(body, routes, key)
        return StreamingResponse(_sse(stream), media_type="text/event-stream", headers=SSE_HEADERS)
    attempts = 0

    def send() -> Any:
        nonlocal attempts
        attempts += 1  # a resend takes over the key of the attempt whose replica died
        return ingress.handles["pipeline"].create.remote(body, routes, key, attempts > 1)

    try:
        record = await ingress.call_with(send, "pipeline")
    except ServiceError as exc:
        if exc.record is not None:  # no article: answer with the failed record
            _count_stages(ingress, routes, exc.record)
            content = {**exc.record.model_dump(mode="json"), **error_body(exc.message, exc.field, exc.kind)}
            return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)
        raise
    _count_stages(ingress, routes, record)
    await ingress.limiter.charge(caller, images=1 if record.image_url else 0, audio_s=record.audio_duration_s or 0.0)
    return record


def _count_stages(ingress: Any, routes: dict[str, Assignment], record: ContentRecord) -> None:
    for service, assignment in routes.items():
        stage = STAGE_OF[service]
        if stage in record.timings_ms:
            ingress.count(assignment, record.timings_ms[stage] / 1000, stage not in record.errors)


@router.get("/v1/content", response_model=ContentPage, responses=error_responses(503, 504))
async def list_content(
    ingress: IngressDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ContentPage:
    return await ingress.call("pipeline", "list_records", limit, offset)


@router.get(
    "/v1/content/{content_id}",
    response_model=ContentRecord,
    operation_id="getContent",
    responses=error_responses(404, 503, 504),
)
async def get_content(content_id: ContentIdParam, ingress: IngressDep) -> ContentRecord:
    record = await ingress.call("pipeline", "get_record", content_id)
    if record is None:
        raise ServiceError(404, f"content {content_id!r} not found", "content_id", "invalid_request_error")
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


async def _asset(ingress: Any, content_id: str, kind: str, media_type: str) -> Response:
    data = await ingress.call("pipeline", "get_asset", content_id, kind)
    if data is None:
        raise ServiceError(404, f"content {content_id!r} has no {kind}", "content_id", "invalid_request_error")
    return Response(content=data, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
