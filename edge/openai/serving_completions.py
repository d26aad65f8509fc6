"""``POST /v1/completions``: one or several prompts, ``n`` choices each, ``best_of``, ``echo`` and log
probabilities, plain or streamed."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from deployments.errors import InvalidRequest
from deployments.text import TextRequest
from edge.access import Principal
from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.ingress import Ingress
from edge.openai.completions import CompletionRequest, CompletionResponse
from edge.openai.streaming import SSE_HEADERS, TextChunks, text_events

router = APIRouter(tags=["OpenAI"])
STREAM = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks with `stream`."}}


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses={**STREAM, **error_responses(400, 404, 502, 503, 504)},
)
async def completions(
    body: CompletionRequest, response: Response, ingress: IngressDep, caller: CallerDep, user: UserHeader = None
) -> Any:
    if body.suffix:
        raise InvalidRequest.for_field("suffix", "is not supported by this model (no fill-in-the-middle)")
    requests = body.to_service()
    n = body.n or 1
    user_id = caller.user(body.user or user)
    if body.stream:
        if (body.best_of or n) > n:
            raise InvalidRequest.for_field("best_of", "cannot be larger than `n` when streaming")
        return await stream_text(
            ingress,
            requests,
            chat=False,
            user_id=user_id,
            n=n,
            include_usage=body.include_usage,
            continuous_usage=body.continuous_usage,
            caller=caller,
        )
    # One call for every prompt: one place at the edge, in Serve's queue and in the engine's.
    results, assignment = await ingress.call_variant("text", "generate_many", requests, user_id, response)
    await ingress.limiter.charge(caller, tokens=sum(r.completion_tokens for r in results))
    return CompletionResponse.of(list(results), n).model_copy(update={"variant": assignment and assignment.variant})


async def stream_text(
    ingress: Ingress,
    requests: list[TextRequest],
    *,
    chat: bool,
    user_id: str | None,
    n: int,
    include_usage: bool,
    tool_name: str | None = None,
    continuous_usage: bool = False,
    caller: Principal | None = None,
) -> StreamingResponse:
    """SSE for one or several text requests; every stream's first item is awaited before answering (a request
    the model rejects gets its 4xx); a client that goes away closes the streams, which stops generation."""
    requests, assignment = ingress.route("text", requests, user_id)
    if len(requests) > 1:  # one stream per prompt: their sequences still wait in the engine as one request
        group = uuid.uuid4().hex
        requests = [r.model_copy(update={"group": group}) for r in requests]
    opened = await ingress.open_streams("text", "generate_stream", requests, assignment)
    streams, firsts = [s for s, _ in opened], [f for _, f in opened]
    chunks = TextChunks(firsts[0].model, chat, n, tool_name, continuous_usage)
    charge = None
    if caller is not None:

        async def charge(tokens: int) -> None:
            await ingress.limiter.charge(caller, tokens=tokens)

    events = text_events(streams, firsts, chunks, include_usage, ingress.config.timeouts_s.text, charge)
    headers = {**SSE_HEADERS, **ingress.variant_headers(assignment)}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)
