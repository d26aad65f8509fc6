"""The Responses API's wire format (``/v1/responses``): the request, the response object, and their conversion to
the text service's chat requests.

A request's ``input`` (a string, or a list of messages with content parts, function calls and their outputs) and
``instructions`` become chat messages, after the conversation of ``previous_response_id`` when it names a stored
response (``instructions`` are not carried over, as OpenAI does). The answer's output items are one assistant
``message`` with ``output_text``, or ``function_call`` items. Strict about types and bounds, tolerant of the
standard fields clients send; fields that change nothing here are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from deployments.errors import InvalidRequest
from deployments.text import MAX_PROMPT_CHARS, MAX_TOKENS_BOUND, TextRequest, TextResult
from deployments.text.schemas import (
    FUNCTION_NAME,
    ChatMessage,
    FunctionSpec,
    ResponseFormat,
    ToolCall,
    ToolCallFunction,
)
from edge.openai.protocol import MAX_TOP_LOGPROBS, NOT_BLANK, OpenAIModel
from edge.openai.protocol import JsonSchemaSpec as _JsonSchemaSpec
from edge.response_store import new_response_id

Text = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


# --- input ------------------------------------------------------------------------------------------------
class InputText(OpenAIModel):
    type: Literal["input_text"]
    text: Text


class OutputText(OpenAIModel):
    type: Literal["output_text"]
    text: Text
    annotations: list[dict[str, Any]] | None = Field(None, description="Accepted and ignored.")
    logprobs: list[dict[str, Any]] | None = Field(None, description="Accepted and ignored.")


class Refusal(OpenAIModel):
    type: Literal["refusal"]
    refusal: Text


class InputImage(OpenAIModel):
    type: Literal["input_image"]
    image_url: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    file_id: str | None = Field(None, max_length=256)
    detail: str | None = Field(None, max_length=16)


class InputFile(OpenAIModel):
    type: Literal["input_file"]
    file_id: str | None = Field(None, max_length=256)
    file_data: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    file_url: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    filename: str | None = Field(None, max_length=256)


class InputAudio(OpenAIModel):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


ContentPart = Annotated[
    InputText | OutputText | Refusal | InputImage | InputFile | InputAudio, Field(discriminator="type")
]


class MessageItem(OpenAIModel):
    """A message: OpenAI's ``EasyInputMessage`` (no ``type``) or a ``message`` item."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | Annotated[list[ContentPart], Field(max_length=256)]
    id: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=32)
    phase: str | None = Field(None, max_length=32, description="Accepted and ignored.")

    def to_service(self, field: str) -> ChatMessage:
        parts = self.content if isinstance(self.content, list) else []
        others = sorted({p.type for p in parts if not isinstance(p, InputText | OutputText | Refusal)})
        if others:
            raise InvalidRequest.for_field(f"{field}.content", f"this model reads text only, not {', '.join(others)}")
        text = self.content if isinstance(self.content, str) else "".join(_part_text(p) for p in parts)
        role = {"developer": "system"}.get(self.role, self.role)
        return ChatMessage(role=role, content=text)  # type: ignore[arg-type]


def _part_text(part: Any) -> str:
    return getattr(part, "text", None) or getattr(part, "refusal", None) or ""


class FunctionCallItem(OpenAIModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: Text
    id: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=32)

    def to_service(self, field: str) -> ChatMessage:
        call = ToolCall(id=self.call_id, function=ToolCallFunction(name=self.name, arguments=self.arguments))
        return ChatMessage(role="assistant", content="", tool_calls=[call])


class FunctionCallOutputItem(OpenAIModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: Text | Annotated[list[ContentPart], Field(max_length=256)]
    id: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=32)

    def to_service(self, field: str) -> ChatMessage:
        text = self.output if isinstance(self.output, str) else "".join(_part_text(p) for p in self.output)
        return ChatMessage(role="tool", content=text, tool_call_id=self.call_id)


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem


# --- options ----------------------------------------------------------------------------------------------
class TextFormatText(OpenAIModel):
    type: Literal["text"]


class TextFormatJsonObject(OpenAIModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(_JsonSchemaSpec):
    type: Literal["json_schema"]


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextOptions(OpenAIModel):
    format: TextFormat | None = None
    verbosity: str | None = Field(None, max_length=16, description="Accepted and ignored.")


class FunctionTool(OpenAIModel):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=4000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(OpenAIModel):
    type: Literal["function"]
    name: str = Field(pattern=FUNCTION_NAME)


class ResponsesRequest(OpenAIModel):
    model: str | None = Field(None, max_length=256, description="The served model's name (see /v1/models).")
    input: (
        Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK)]
        | Annotated[list[InputItem], Field(min_length=1, max_length=256)]
    ) = Field(description="A text, or a list of messages (with content parts), function calls and their outputs.")
    instructions: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="A system message, this turn.")
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="Accepted; not returned yet.")
    seed: int | None = Field(None, ge=0, le=2**53 - 1, description="Same seed, same output (extension).")
    text: TextOptions | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored (one call per answer).")
    stream: bool | None = Field(None, description="Answer with the typed event stream.")
    stream_options: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Keep the response (default true) for retrieval and continuation.")
    previous_response_id: str | None = Field(None, max_length=128, description="Continue a stored conversation.")
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")
    # standard fields without effect here
    truncation: Literal["auto", "disabled"] | None = Field(None, description="Accepted and ignored.")
    include: list[Annotated[str, Field(max_length=128)]] | None = Field(None, max_length=16, description="Ignored.")
    reasoning: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    service_tier: str | None = Field(None, max_length=64, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    prompt_cache_key: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    background: Literal[False] | None = Field(None, description="Only foreground responses (false).")
    max_tool_calls: int | None = Field(None, ge=1, le=128, description="Accepted and ignored (one call).")

    def turn(self) -> list[ChatMessage]:
        """This turn's input as chat messages."""
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        return [item.to_service(f"input.{n}") for n, item in enumerate(self.input)]

    def messages(self, earlier: list[ChatMessage]) -> list[ChatMessage]:
        """The conversation the model reads: this turn's instructions, an earlier conversation (a stored
        response's), then this turn's input."""
        instructions = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        return [*instructions, *earlier, *self.turn()]

    def to_service(self, earlier: list[ChatMessage]) -> TextRequest:
        tools = [FunctionSpec(**t.model_dump(exclude={"type", "strict"})) for t in self.tools or []]
        choice = self.tool_choice.name if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        fmt = self.text.format if self.text else None
        response_format = None
        if isinstance(fmt, TextFormatJsonSchema):
            response_format = ResponseFormat(type="json_schema", json_schema=fmt.schema_ or {})
        elif isinstance(fmt, TextFormatJsonObject):
            response_format = ResponseFormat(type="json_object")
        try:
            return TextRequest(
                model=self.model,
                messages=self.messages(earlier),
                max_tokens=self.max_output_tokens,
                temperature=self.temperature,
                top_p=self.top_p if self.top_p is None else max(self.top_p, 1e-6),
                seed=self.seed,
                response_format=response_format,
                tools=tools or None,
                tool_choice=choice,
            )
        except ValidationError as exc:
            # A bound of the whole conversation (an earlier one plus this turn) rather than of one field.
            first = exc.errors()[0]
            field = _RESPONSES_FIELD.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else "input"
            raise InvalidRequest.for_field(field, first["msg"]) from exc


# The text service's field names in the Responses API's words.
_RESPONSES_FIELD = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


# --- the response object ----------------------------------------------------------------------------------
class OutputTextPart(OpenAIModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(OpenAIModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextPart]


class OutputFunctionCall(OpenAIModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[OutputMessage | OutputFunctionCall, Field(discriminator="type")]


class InputTokensDetails(OpenAIModel):
    cached_tokens: int = 0


class OutputTokensDetails(OpenAIModel):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(OpenAIModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(OpenAIModel):
    code: str
    message: str


class ResponseObject(OpenAIModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @classmethod
    def start(cls, body: ResponsesRequest, model: str) -> ResponseObject:
        """The response as it begins (``in_progress``, no output yet), echoing what the request asked."""
        return cls(
            id=new_response_id(),
            created_at=int(time.time()),
            status="in_progress",
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=model,
            output=[],
            parallel_tool_calls=bool(body.parallel_tool_calls),
            previous_response_id=body.previous_response_id,
            store=body.store is not False,
            temperature=body.temperature,
            top_p=body.top_p,
            text={
                "format": (
                    body.text.format.model_dump(by_alias=True) if body.text and body.text.format else {"type": "text"}
                )
            },
            tool_choice=(
                body.tool_choice.model_dump()
                if isinstance(body.tool_choice, NamedToolChoice)
                else body.tool_choice or "auto"
            ),
            tools=[t.model_dump(exclude_none=True) for t in body.tools or []],
            user=body.user,
            metadata=dict(body.metadata or {}),
        )

    def finish(self, result: TextResult) -> ResponseObject:
        """The response once the model answered: its output items, usage and status."""
        choice = result.choices[0]
        output: list[OutputMessage | OutputFunctionCall] = [
            OutputFunctionCall(
                id=f"fc_{uuid.uuid4().hex}", call_id=c.id, name=c.function.name, arguments=c.function.arguments,
                status="completed",
            )
            for c in choice.tool_calls or []
        ]  # fmt: skip
        if choice.text or not output:
            status = "incomplete" if choice.finish_reason == "length" else "completed"
            part = OutputTextPart(text=choice.text)
            output.insert(0, OutputMessage(id=f"msg_{uuid.uuid4().hex}", status=status, content=[part]))
        return self.model_copy(update=self.closing(result, output))

    @staticmethod
    def closing(result: TextResult, output: list[Any]) -> dict[str, Any]:
        """What the end of a generation sets: status, output, usage, and why it is incomplete if it is."""
        length = result.choices[0].finish_reason == "length"
        usage = ResponseUsage(
            input_tokens=result.prompt_tokens,
            output_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        return {
            "status": "incomplete" if length else "completed",
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if length else None,
            "completed_at": int(time.time()),
            "output": output,
            "usage": usage,
        }

    def conversation(self, read: list[ChatMessage]) -> list[dict[str, Any]]:
        """What a continuation reads: the conversation this turn continued and its input (not its
        instructions: they hold for one turn), then its answer."""
        answer: list[ChatMessage] = []
        calls = [
            ToolCall(id=item.call_id, function=ToolCallFunction(name=item.name, arguments=item.arguments))
            for item in self.output
            if isinstance(item, OutputFunctionCall)
        ]
        text = "".join(p.text for item in self.output if isinstance(item, OutputMessage) for p in item.content)
        if text or calls:
            answer.append(ChatMessage(role="assistant", content=text, tool_calls=calls or None))
        return [m.model_dump(mode="json", exclude_none=True) for m in [*read, *answer]]


class DeletedResponse(OpenAIModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
