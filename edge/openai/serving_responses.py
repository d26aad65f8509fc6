"""``/v1/responses``: OpenAI's Responses API on the text service, plain or as the typed event stream; stored
responses (``store``, default true) continue a conversation (``previous_response_id``) and can be read back and
deleted. The same engine, admission, experiments and limits as chat completions: one text request per response."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from deployments.errors import NotFound, ServiceError, from_exception
from deployments.text import TextRequest, TextResult
from deployments.text.schemas import ChatMessage, ChoiceDelta
from edge.access import Principal
from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.ingress import Ingress
from edge.openai.responses import (
    DeletedResponse,
    OutputFunctionCall,
    OutputMessage,
    OutputTextPart,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
)
from edge.openai.serving_completions import STREAM
from edge.openai.streaming import SSE_HEADERS

router = APIRouter(tags=["OpenAI"])
ResponseIdParam = Annotated[str, Path(max_length=128, description="A response id (`resp_` + 32 hex).")]


async def _earlier(ingress: Ingress, caller: Principal, response_id: str | None) -> list[ChatMessage]:
    """The conversation a stored response ended (``previous_response_id``), for the key that made it."""
    if response_id is None:
        return []
    stored = await asyncio.to_thread(ingress.response_store().get, response_id, caller.counter)
    if stored is None:
        raise NotFound(f"response {response_id!r} not found (or expired)", "previous_response_id")
    return [ChatMessage.model_validate(m) for m in stored[1]]


async def _keep(ingress: Ingress, caller: Principal, answer: ResponseObject, read: list[ChatMessage]) -> None:
    if answer.store:
        conversation = answer.conversation(read)
        record = answer.model_dump(mode="json")
        await asyncio.to_thread(ingress.response_store().put, answer.id, caller.counter, record, conversation)


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses={**STREAM, **error_responses(400, 404, 502, 503, 504)},
)
async def create_response(
    body: ResponsesRequest, response: Response, ingress: IngressDep, caller: CallerDep, user: UserHeader = None
) -> Any:
    earlier = await _earlier(ingress, caller, body.previous_response_id)
    request = body.to_service(earlier)
    read = [*earlier, *body.turn()]
    user_id = caller.user(body.user or user)
    if body.stream:
        return await _stream(ingress, caller, body, request, read, user_id)
    result, assignment = await ingress.call_variant("text", "generate", request, user_id, response)
    await ingress.limiter.charge(caller, tokens=result.completion_tokens)
    answer = ResponseObject.start(body, result.model).finish(result)
    answer.variant = assignment.variant if assignment else None
    await _keep(ingress, caller, answer, read)
    return answer


@router.get("/v1/responses/{response_id}", response_model=ResponseObject, responses=error_responses(404, 503, 504))
async def get_response(response_id: ResponseIdParam, ingress: IngressDep, caller: CallerDep) -> Any:
    stored = await asyncio.to_thread(ingress.response_store().get, response_id, caller.counter)
    if stored is None:
        raise NotFound(f"response {response_id!r} not found (or expired)", "response_id")
    return stored[0]


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse, responses=error_responses(404, 503, 504))
async def delete_response(response_id: ResponseIdParam, ingress: IngressDep, caller: CallerDep) -> DeletedResponse:
    if not await asyncio.to_thread(ingress.response_store().delete, response_id, caller.counter):
        raise NotFound(f"response {response_id!r} not found (or expired)", "response_id")
    return DeletedResponse(id=response_id)


# --- the event stream -------------------------------------------------------------------------------------
async def _stream(
    ingress: Ingress,
    caller: Principal,
    body: ResponsesRequest,
    request: TextRequest,
    read: list[ChatMessage],
    user_id: str | None,
) -> StreamingResponse:
    """The typed events the ``openai`` client parses; the request is accepted (its first item awaited) before
    the answer starts, so a request the model rejects gets its 4xx, not a 200 with an error inside."""
    request, assignment = ingress.route("text", request, user_id)
    [(stream, first)] = await ingress.open_streams("text", "generate_stream", [request], assignment)
    events = ResponseEvents(ResponseObject.start(body, first.model), named_tool=request.tool_choice)
    events.response.variant = assignment.variant if assignment else None

    async def produce() -> AsyncIterator[str]:
        result: TextResult | None = None
        try:
            for line in events.opening():
                yield line
            async with asyncio.timeout(ingress.config.timeouts_s.text):
                async for item in stream:
                    if isinstance(item, ChoiceDelta):
                        for line in events.delta(item):
                            yield line
                    elif isinstance(item, TextResult):
                        result = item
            if result is None:
                raise RuntimeError("the text service ended its stream without a result")
            for line in events.closing(result):
                yield line
            await ingress.limiter.charge(caller, tokens=result.completion_tokens)
            await _keep(ingress, caller, events.response, read)
        except Exception as exc:  # the answer has started: the failure goes in the stream, as OpenAI does
            stream.cancel()
            for line in events.failure(from_exception(exc, "text", ingress.config.timeouts_s.text)):
                yield line

    headers = {**SSE_HEADERS, **ingress.variant_headers(assignment)}
    return StreamingResponse(produce(), media_type="text/event-stream", headers=headers)


class ResponseEvents:
    """The Responses API's event sequence for one answer: ``response.created``, ``response.in_progress``, an output
    item (a message with its text part, or a function call) added, its deltas, its ``done`` events, then
    ``response.completed`` (or ``response.incomplete``), each numbered."""

    def __init__(self, response: ResponseObject, named_tool: str | None) -> None:
        self.response = response
        self.named_tool = named_tool if named_tool not in (None, "none", "auto", "required") else None
        self.sequence = itertools.count()
        self.message_id = f"msg_{uuid.uuid4().hex}"
        self.call = (f"fc_{uuid.uuid4().hex}", f"call_{uuid.uuid4().hex[:24]}")
        self.text: list[str] = []
        self.arguments: list[str] = []
        self.message_open = self.call_open = False

    def _event(self, kind: str, **data: Any) -> str:
        payload = {"type": kind, "sequence_number": next(self.sequence), **data}
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    def _snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    def opening(self) -> list[str]:
        return [self._event("response.created", response=self._snapshot()),
                self._event("response.in_progress", response=self._snapshot())]  # fmt: skip

    def _message(self, status: str, text: str | None = None) -> OutputMessage:
        parts = [] if text is None else [OutputTextPart(text=text)]
        return OutputMessage(id=self.message_id, status=status, content=parts)  # type: ignore[arg-type]

    def _function_call(self, status: str, name: str, arguments: str, call_id: str | None = None) -> OutputFunctionCall:
        return OutputFunctionCall(
            id=self.call[0],
            call_id=call_id or self.call[1],
            name=name,
            arguments=arguments,
            status=status,  # type: ignore[arg-type]
        )

    def delta(self, item: ChoiceDelta) -> list[str]:
        out = []
        if item.text:
            if not self.message_open:
                self.message_open = True
                out.append(self._event("response.output_item.added", output_index=0,
                                       item=self._message("in_progress").model_dump()))  # fmt: skip
                out.append(self._event("response.content_part.added", item_id=self.message_id, output_index=0,
                                       content_index=0, part=OutputTextPart(text="").model_dump()))  # fmt: skip
            self.text.append(item.text)
            out.append(self._event("response.output_text.delta", item_id=self.message_id, output_index=0,
                                   content_index=0, delta=item.text, logprobs=[]))  # fmt: skip
        if item.tool_call_arguments and self.named_tool:
            if not self.call_open:
                self.call_open = True
                added = self._function_call("in_progress", self.named_tool, "").model_dump()
                out.append(self._event("response.output_item.added", output_index=0, item=added))
            self.arguments.append(item.tool_call_arguments)
            out.append(self._event("response.function_call_arguments.delta", item_id=self.call[0], output_index=0,
                                   delta=item.tool_call_arguments))  # fmt: skip
        return out

    def closing(self, result: TextResult) -> list[str]:
        """The ``done`` events of every item, then the whole response."""
        choice = result.choices[0]
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        out, output = [], []
        index = 0
        if self.message_open or (not choice.tool_calls and not self.call_open):
            text = "".join(self.text)
            if not self.message_open:  # an empty answer still has its message
                out.append(self._event("response.output_item.added", output_index=0,
                                       item=self._message("in_progress").model_dump()))  # fmt: skip
                out.append(self._event("response.content_part.added", item_id=self.message_id, output_index=0,
                                       content_index=0, part=OutputTextPart(text="").model_dump()))  # fmt: skip
            part = OutputTextPart(text=text).model_dump()
            out.append(self._event("response.output_text.done", item_id=self.message_id, output_index=0,
                                   content_index=0, text=text, logprobs=[]))  # fmt: skip
            out.append(self._event("response.content_part.done", item_id=self.message_id, output_index=0,
                                   content_index=0, part=part))  # fmt: skip
            message = self._message(status, text)
            out.append(self._event("response.output_item.done", output_index=0, item=message.model_dump()))
            output.append(message)
            index = 1
        for n, call in enumerate(choice.tool_calls or []):
            streamed = self.call_open and n == 0
            if streamed:
                item = self._function_call("completed", call.function.name, call.function.arguments)
            else:
                item = OutputFunctionCall(
                    id=f"fc_{uuid.uuid4().hex}", call_id=call.id, name=call.function.name,
                    arguments=call.function.arguments, status="completed",
                )  # fmt: skip
                added = item.model_copy(update={"status": "in_progress", "arguments": ""}).model_dump()
                out.append(self._event("response.output_item.added", output_index=index, item=added))
            out.append(self._event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                   name=item.name, arguments=item.arguments))  # fmt: skip
            out.append(self._event("response.output_item.done", output_index=index, item=item.model_dump()))
            output.append(item)
            index += 1
        self.response = self.response.model_copy(update=ResponseObject.closing(result, output))
        kind = "response.completed" if self.response.status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=self._snapshot()))
        return out

    def failure(self, error: ServiceError) -> list[str]:
        failed = self.response.model_copy(
            update={"status": "failed", "error": ResponseError(code=error.error_type, message=error.message)}
        )
        return [self._event("response.failed", response=failed.model_dump(mode="json"))]
