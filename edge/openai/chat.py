"""``/v1/chat/completions``: messages, tools and the request; the response with its messages, tool calls and log
probabilities (the streamed chunks reuse the last two)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from deployments.errors import InvalidRequest
from deployments.text import MAX_PROMPT_CHARS, MAX_TOKENS_BOUND, TextRequest, TextResult
from deployments.text.schemas import (
    FUNCTION_NAME,
    ChatMessage,
    Choice,
    FunctionSpec,
    TokenLogprob,
    ToolCall,
    ToolCallFunction,
)
from edge.openai.protocol import MAX_TOP_LOGPROBS, OpenAIModel, ResponseFormatIn, SamplingFields, Usage


class TextPart(OpenAIModel):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class RefusalPart(OpenAIModel):
    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_PROMPT_CHARS)


class ImagePart(OpenAIModel):
    type: Literal["image_url"]
    image_url: dict[str, Any]


class AudioPart(OpenAIModel):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(OpenAIModel):
    type: Literal["file"]
    file: dict[str, Any]


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextContent = str | Annotated[list[TextPart], Field(max_length=256)]


class FunctionCallIn(OpenAIModel):
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS)


class ToolCallIn(OpenAIModel):
    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class _Message(OpenAIModel):
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        content = getattr(self, "content", None)
        if isinstance(content, list):
            return "".join(getattr(p, "text", None) or getattr(p, "refusal", None) or "" for p in content)
        return content or ""

    def to_service(self, index: int = 0) -> ChatMessage:
        return ChatMessage(role=self.service_role, content=self.text(), name=self.name)  # type: ignore[arg-type]

    service_role: ClassVar[str] = "user"


class SystemMessage(_Message):
    role: Literal["system"]
    content: TextContent
    service_role: ClassVar[str] = "system"


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: TextContent
    service_role: ClassVar[str] = "system"


class UserMessage(_Message):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(max_length=256)]

    def to_service(self, index: int = 0) -> ChatMessage:
        if isinstance(self.content, list) and any(not isinstance(p, TextPart) for p in self.content):
            kinds = sorted({p.type for p in self.content if not isinstance(p, TextPart)})
            raise InvalidRequest.for_field(
                f"messages.{index}.content", f"this model reads text only, not {', '.join(kinds)}"
            )
        return super().to_service(index)


class AssistantMessageIn(_Message):
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], Field(max_length=256)] | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=64)
    refusal: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    function_call: FunctionCallIn | None = Field(None, description="Deprecated form of `tool_calls`.")
    audio: dict[str, Any] | None = Field(None, description="Accepted and ignored (an earlier audio answer).")

    def to_service(self, index: int = 0) -> ChatMessage:
        calls = [ToolCall(id=c.id, function=ToolCallFunction(**c.function.model_dump())) for c in self.tool_calls or []]
        if self.function_call is not None:
            calls.append(ToolCall(id="call_0", function=ToolCallFunction(**self.function_call.model_dump())))
        return ChatMessage(role="assistant", content=self.text(), name=self.name, tool_calls=calls or None)


class ToolMessage(_Message):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str = Field(min_length=1, max_length=128)

    def to_service(self, index: int = 0) -> ChatMessage:
        return ChatMessage(role="tool", content=self.text(), tool_call_id=self.tool_call_id)


class FunctionMessage(_Message):
    role: Literal["function"]
    content: str | None = None
    name: str = Field(max_length=64)  # type: ignore[assignment]

    def to_service(self, index: int = 0) -> ChatMessage:
        return ChatMessage(role="tool", content=self.text(), tool_call_id=self.name)


ChatMessageIn = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessageIn | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionIn(OpenAIModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=4000)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(OpenAIModel):
    type: Literal["function"]
    function: FunctionIn


class NamedFunction(OpenAIModel):
    name: str = Field(pattern=FUNCTION_NAME)


class ToolChoiceIn(OpenAIModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND, description="Alias of max_tokens.")
    logprobs: bool | None = Field(None, description="Log probabilities of the output tokens.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="Alternatives per token.")
    response_format: ResponseFormatIn | None = Field(None, description="`json_object` or `json_schema` output.")
    tools: list[ToolIn] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored (one call per choice).")
    functions: list[FunctionIn] | None = Field(None, max_length=128, description="Deprecated form of `tools`.")
    function_call: Literal["none", "auto"] | NamedFunction | None = Field(None, description="Deprecated.")
    modalities: list[Literal["text"]] | None = Field(None, description="Text only.")
    prediction: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    reasoning_effort: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    verbosity: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    prompt_cache_key: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    safety_identifier: str | None = Field(None, max_length=256, description="Accepted and ignored.")

    def to_service(self) -> TextRequest:
        sampling = self.sampling()
        sampling["max_tokens"] = self.max_completion_tokens or self.max_tokens
        tools = [FunctionSpec(**t.function.model_dump(exclude={"strict"})) for t in self.tools or []]
        tools += [FunctionSpec(**f.model_dump(exclude={"strict"})) for f in self.functions or []]
        choice: str | None = None
        picked = self.tool_choice if self.tool_choice is not None else self.function_call
        if isinstance(picked, ToolChoiceIn):
            choice = picked.function.name
        elif isinstance(picked, NamedFunction):
            choice = picked.name
        elif picked is not None:
            choice = picked
        return TextRequest(
            messages=[m.to_service(n) for n, m in enumerate(self.messages)],
            logprobs=(self.top_logprobs or 0) if self.logprobs else None,
            response_format=self.structure(self.response_format),
            tools=tools or None,
            tool_choice=choice,
            **sampling,
        )


# --- the response -----------------------------------------------------------------------------------------
class TopLogprobOut(OpenAIModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobToken(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChatChoiceLogprobs(OpenAIModel):
    content: list[ChatLogprobToken] | None
    refusal: list[ChatLogprobToken] | None = None

    @classmethod
    def of(cls, entries: list[TokenLogprob]) -> ChatChoiceLogprobs:
        return cls(content=[chat_logprob(e) for e in entries])


def chat_logprob(entry: TokenLogprob) -> ChatLogprobToken:
    return ChatLogprobToken(
        token=entry.token,
        logprob=entry.logprob,
        bytes=entry.bytes,
        top_logprobs=[TopLogprobOut(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in entry.top],
    )


class FunctionCallOut(OpenAIModel):
    name: str
    arguments: str


class ToolCallOut(OpenAIModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    refusal: str | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None
    logprobs: ChatChoiceLogprobs | None = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, result: TextResult) -> ChatCompletionResponse:
        return cls(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=result.model,
            choices=[chat_choice(c) for c in result.choices],
            usage=Usage.of(result.prompt_tokens, result.completion_tokens),
        )


def tool_calls_out(calls: list[ToolCall] | None) -> list[ToolCallOut] | None:
    if not calls:
        return None
    return [ToolCallOut(id=c.id, function=FunctionCallOut(**c.function.model_dump())) for c in calls]


def chat_choice(choice: Choice) -> ChatChoice:
    calls = tool_calls_out(choice.tool_calls)
    message = AssistantMessage(content=choice.text if (choice.text or not calls) else None, tool_calls=calls)
    logprobs = ChatChoiceLogprobs.of(choice.logprobs) if choice.logprobs is not None else None
    return ChatChoice(index=choice.index, message=message, finish_reason=choice.finish_reason, logprobs=logprobs)
