"""``POST /v1/chat/completions``: chat with ``n`` choices, log probabilities, structured output (``json_object``,
``json_schema``) and tool calls, plain or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.openai.chat import ChatCompletionRequest, ChatCompletionResponse
from edge.openai.serving_completions import STREAM, stream_text

router = APIRouter(tags=["OpenAI"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**STREAM, **error_responses(400, 404, 502, 503, 504)},
)
async def chat_completions(
    body: ChatCompletionRequest,
    response: Response,
    ingress: IngressDep,
    caller: CallerDep,
    user: UserHeader = None,
) -> Any:
    request = body.to_service()
    user_id = caller.user(body.user or user)
    if body.stream:
        named = request.tool_choice if request.tool_choice not in (None, "none", "auto", "required") else None
        return await stream_text(
            ingress,
            [request],
            chat=True,
            user_id=user_id,
            n=request.n,
            include_usage=body.include_usage,
            tool_name=named,
            continuous_usage=body.continuous_usage,
            caller=caller,
        )
    result, assignment = await ingress.call_variant("text", "generate", request, user_id, response)
    await ingress.limiter.charge(caller, tokens=result.completion_tokens)
    return ChatCompletionResponse.of(result).model_copy(update={"variant": assignment and assignment.variant})
