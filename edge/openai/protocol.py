"""OpenAI-compatible request and response shapes, and their conversion to the services' own requests.

Kept apart from the routes (as vLLM keeps ``entrypoints/openai/protocol.py``); one module past 400 lines because it
is one idea, the API's wire format, whose families share their sampling fields, messages and error shape.

The request models are strict about types and bounds (a string where a number belongs, a negative ``max_tokens``:
422 naming the field) and tolerant of the OpenAI request shape: every standard field is declared, so a client
that sends ``frequency_penalty: 0``, ``stop: null`` or ``store: false`` is answered, not refused. Fields that mean
nothing here (``service_tier``, ``store``, ``metadata``, ``parallel_tool_calls``, ...) are accepted and ignored
(``IGNORED_FIELDS``, listed in docs/api.md); a field OpenAI does not have is still a 422 naming it. Each request
converts itself into the service request at the boundary (``to_service``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from deployments.common import SEED_MAX, JsonTyped
from deployments.errors import InvalidRequest
from deployments.image import MAX_PROMPT_CHARS as MAX_IMAGE_PROMPT_CHARS
from deployments.image import ImageRequest, ImageResult
from deployments.text import MAX_PROMPT_CHARS, MAX_TOKENS_BOUND, TextRequest, TextResult
from deployments.text.schemas import (
    FUNCTION_NAME,
    MAX_GRAMMAR_CHARS,
    MAX_LOGIT_BIAS,
    MAX_STOPS,
    ChatMessage,
    Choice,
    FunctionSpec,
    ResponseFormat,
    TokenLogprob,
    ToolCall,
    ToolCallFunction,
)
from deployments.voice import MAX_INPUT_CHARS, AudioFormat, VoiceRequest

# Standard OpenAI request fields that change nothing here: accepted, ignored, and listed in the README.
IGNORED_FIELDS = (
    "service_tier",
    "store",
    "metadata",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "stream_options.include_obfuscation",
    "quality",
    "style",
    "background",
    "moderation",
    "output_compression",
    "instructions",
)
NOT_BLANK = r"\S"  # in the schema too, so schema-valid requests are never refused for a blank text
MAX_CHOICES = 64
MAX_TOP_LOGPROBS = 20


class OpenAIModel(JsonTyped, BaseModel):
    """Strict JSON types (``JsonTyped``), every standard field declared, anything else refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(OpenAIModel):
    include_usage: bool | None = Field(None, description="A last chunk with the usage of the whole request.")
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored (no obfuscation here).")
    continuous_usage_stats: bool | None = Field(None, description="Usage so far in every chunk (vLLM's extension).")


StopString = Annotated[str, Field(min_length=1, max_length=256)]
TokenKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
LogitBias = Annotated[
    dict[TokenKey, Annotated[float, Field(ge=-100.0, le=100.0)]],
    Field(max_length=MAX_LOGIT_BIAS),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]{1,9}$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
            "maxProperties": MAX_LOGIT_BIAS,
        }
    ),
]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None


class StructuredOutputs(OpenAIModel):
    """vLLM's ``structured_outputs``: exactly one constraint on the output."""

    json_: dict[str, Any] | str | None = Field(None, alias="json", description="A JSON schema (or its text).")
    regex: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS)
    choice: list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]] | None = Field(None, min_length=1, max_length=1024)
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="A Lark grammar.")
    json_object: bool | None = Field(None, description="Any JSON object.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


GuidedJson = dict[str, Any] | Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)]


def _schema(value: dict[str, Any] | str, field: str) -> dict[str, Any]:
    """A JSON schema given as an object or as its text (vLLM takes both)."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        raise InvalidRequest.for_field(field, "is not a JSON schema (not JSON)") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest.for_field(field, "is not a JSON schema (not an object)")
    return parsed


class _SamplingFields(OpenAIModel):
    """Fields completions and chat completions share (OpenAI's, plus vLLM's sampling and structured-output
    extensions)."""

    model: str | None = Field(None, max_length=256, description="The served model's name (see /v1/models).")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = Field(None, description="Token id (as a string) to a bias from -100 to 100.")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Choices per prompt (the config may allow fewer).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Same seed, same output (see the README).")
    stop: Stop = Field(None, description="Up to 4 stop strings, each 1 to 256 characters.")
    stream: bool | None = Field(None, description="Answer with server-sent events (OpenAI chunks), then [DONE].")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")
    # vLLM's sampling extensions
    top_k: int | None = Field(None, ge=-1, le=100_000, description="Keep the k likeliest tokens; 0 or -1: all.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    min_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS_BOUND, description="End-of-text not before.")
    ignore_eos: bool | None = Field(None, description="Keep generating past end-of-text, up to the token limit.")
    # vLLM's structured outputs (the current field, and the older guided_* ones)
    structured_outputs: StructuredOutputs | None = Field(None, description="One constraint on the output (vLLM).")
    guided_json: GuidedJson | None = Field(None, description="A JSON schema the output validates against (vLLM).")
    guided_regex: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="vLLM.")
    guided_choice: list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]] | None = Field(
        None, min_length=1, max_length=1024, description="The output is exactly one of these (vLLM)."
    )
    guided_grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="Lark (vLLM).")
    # standard fields without effect here
    service_tier: str | None = Field(None, max_length=64, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored (nothing is stored for distillation).")
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Accepted and ignored.")

    def structure(self, response_format: ResponseFormatIn | None = None) -> ResponseFormat | None:
        """The one constraint on the output, from whichever field asked for it; two at once is a 400."""
        asked: list[tuple[str, ResponseFormat]] = []
        if response_format is not None:
            asked.append(("response_format", response_format.to_service()))
        if self.guided_json is not None:
            schema = _schema(self.guided_json, "guided_json")
            asked.append(("guided_json", ResponseFormat(type="json_schema", json_schema=schema)))
        if self.guided_regex is not None:
            asked.append(("guided_regex", ResponseFormat(type="regex", regex=self.guided_regex)))
        if self.guided_choice is not None:
            asked.append(("guided_choice", ResponseFormat(type="choice", choices=self.guided_choice)))
        if self.guided_grammar is not None:
            asked.append(("guided_grammar", ResponseFormat(type="grammar", grammar=self.guided_grammar)))
        outputs = self.structured_outputs
        if outputs is not None:
            given = [
                (name, fmt)
                for name, fmt in (
                    (
                        "json",
                        outputs.json_ is not None
                        and ResponseFormat(
                            type="json_schema", json_schema=_schema(outputs.json_, "structured_outputs.json")
                        ),
                    ),
                    ("regex", outputs.regex is not None and ResponseFormat(type="regex", regex=outputs.regex)),
                    ("choice", outputs.choice is not None and ResponseFormat(type="choice", choices=outputs.choice)),
                    (
                        "grammar",
                        outputs.grammar is not None and ResponseFormat(type="grammar", grammar=outputs.grammar),
                    ),
                    ("json_object", bool(outputs.json_object) and ResponseFormat(type="json_object")),
                )
                if fmt
            ]
            asked += [(f"structured_outputs.{name}", fmt) for name, fmt in given]
        if len(asked) > 1:
            names = ", ".join(name for name, _ in asked)
            raise InvalidRequest.for_field(asked[1][0], f"one constraint on the output at a time, not {names}")
        return asked[0][1] if asked else None

    def sampling(self) -> dict[str, Any]:
        """The service request's sampling fields (omitted ones keep the service's defaults)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        out: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p if self.top_p is None else max(self.top_p, 1e-6),
            "seed": self.seed,
            "stop": stops,
            "n": self.n or 1,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "presence_penalty": self.presence_penalty or 0.0,
            "repetition_penalty": self.repetition_penalty or 1.0,
            "top_k": max(self.top_k or 0, 0),
            "min_p": self.min_p or 0.0,
            "min_tokens": self.min_tokens or 0,
            "ignore_eos": bool(self.ignore_eos),
            "logit_bias": {int(t): b for t, b in (self.logit_bias or {}).items()},
        }
        return out

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


# --- completions ----------------------------------------------------------------------------------------
PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK)]
PromptTokens = Annotated[list[Annotated[int, Field(ge=0, le=10_000_000)]], Field(min_length=1, max_length=32_000)]


class CompletionRequest(_SamplingFields):
    prompt: (
        PromptText
        | Annotated[list[PromptText], Field(min_length=1, max_length=64)]
        | PromptTokens
        | Annotated[list[PromptTokens], Field(min_length=1, max_length=64)]
    ) = Field(description="A prompt, a list of prompts, token ids, or a list of token-id lists.")
    best_of: int | None = Field(
        None, ge=1, le=MAX_CHOICES, description="Candidates per prompt; the n likeliest return (below n: n)."
    )
    echo: bool | None = Field(None, description="Return the prompt before the completion.")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="Alternatives per token.")
    suffix: str | None = Field(None, max_length=0, description="Fill-in-the-middle is not supported: empty only.")

    def prompts(self) -> list[str | list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def to_service(self) -> list[TextRequest]:
        """One service request per prompt (choices are numbered across them, as OpenAI does)."""
        sampling = self.sampling()
        best_of = max(self.best_of, sampling["n"]) if self.best_of is not None else None  # fewer than n: n
        extra = {"best_of": best_of, "echo": bool(self.echo), "logprobs": self.logprobs}
        structure = self.structure()
        out = []
        for prompt in self.prompts():
            source = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}
            out.append(TextRequest(**source, **sampling, **extra, response_format=structure))
        return out


# --- chat -----------------------------------------------------------------------------------------------
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


class JsonSchemaSpec(OpenAIModel):
    name: str = Field(max_length=64, pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=4000)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextFormat(OpenAIModel):
    type: Literal["text"]

    def to_service(self) -> ResponseFormat:
        return ResponseFormat(type="text")


class JsonObjectFormat(OpenAIModel):
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON schema the object must validate against (a common extension)."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_service(self) -> ResponseFormat:
        if self.schema_ is not None:
            return ResponseFormat(type="json_schema", json_schema=self.schema_)
        return ResponseFormat(type="json_object")


class JsonSchemaFormat(OpenAIModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec

    def to_service(self) -> ResponseFormat:
        return ResponseFormat(type="json_schema", json_schema=self.json_schema.schema_ or {})


ResponseFormatIn = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


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


class ChatCompletionRequest(_SamplingFields):
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


# --- responses ------------------------------------------------------------------------------------------
class Usage(OpenAIModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionLogprobs(OpenAIModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def of(cls, entries: list[TokenLogprob], start: int = 0) -> CompletionLogprobs:
        out = cls(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        offset = start
        for entry in entries:
            out.tokens.append(entry.token)
            out.token_logprobs.append(entry.logprob)
            out.top_logprobs.append({t.token: t.logprob for t in entry.top} if entry.logprob is not None else None)
            out.text_offset.append(offset)
            offset += len(entry.token)
        return out


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, results: list[TextResult], n: int) -> CompletionResponse:
        """One response for every prompt's result; choice ``index`` counts across prompts (prompt * n + k)."""
        choices: list[CompletionChoice] = []
        for p, result in enumerate(results):
            for choice in result.choices:
                choices.append(completion_choice(result, choice, p * n + choice.index))
        return cls(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=results[0].model,
            choices=choices,
            usage=Usage.of(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
        )


def completion_choice(result: TextResult, choice: Choice, index: int) -> CompletionChoice:
    prefix = result.prompt_text or ""
    logprobs = None
    if choice.logprobs is not None:
        entries: list[TokenLogprob] = [*(result.prompt_logprobs or []), *choice.logprobs]
        logprobs = CompletionLogprobs.of(entries)
    finish = "stop" if choice.finish_reason == "tool_calls" else choice.finish_reason
    return CompletionChoice(index=index, text=prefix + choice.text, finish_reason=finish, logprobs=logprobs)


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


# --- images ---------------------------------------------------------------------------------------------
_SIDES = "|".join(str(n) for n in range(2048, 7, -8))  # the multiples of 8 up to the largest side
SIZE_PATTERN = f"^({_SIDES})x({_SIDES})$"


class ImageGenerationRequest(OpenAIModel):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS, pattern=NOT_BLANK)
    model: str | None = Field(None, max_length=256)
    n: int | None = Field(None, ge=1, le=8, description="Images (the config may allow fewer).")
    size: str | None = Field(
        None,
        pattern=SIZE_PATTERN,
        description="`WIDTHxHEIGHT`, each a multiple of 8 up to 2048 (the config may allow less); default from config.",
    )
    response_format: Literal["b64_json"] | None = Field(None, description="Images come back base64-encoded.")
    quality: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    style: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    background: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    moderation: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    output_format: Literal["png"] | None = Field(None, description="PNG only.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Accepted and ignored.")
    user: str | None = Field(None, max_length=256)
    negative_prompt: str | None = Field(None, max_length=MAX_IMAGE_PROMPT_CHARS, description="Extension.")
    steps: int | None = Field(
        None, ge=1, le=150, description="Denoising steps (extension; the config may allow fewer)."
    )
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0, description="Guidance (extension).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)

    def to_service(self) -> ImageRequest:
        width = height = None
        if self.size:
            width, height = (int(s) for s in self.size.split("x"))
        return ImageRequest(
            model=self.model,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=width,
            height=height,
            seed=self.seed,
            n=self.n or 1,
        )


class ImageData(OpenAIModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageGenerationResponse(OpenAIModel):
    created: int
    data: list[ImageData]
    model: str
    seed: int
    size: str
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, result: ImageResult) -> ImageGenerationResponse:
        import base64

        return cls(
            created=int(time.time()),
            data=[ImageData(b64_json=base64.b64encode(png).decode()) for png in result.images],
            model=result.model,
            seed=result.seed,
            size=f"{result.width}x{result.height}",
        )


# --- speech ---------------------------------------------------------------------------------------------
class SpeechRequest(OpenAIModel):
    model: str | None = Field(None, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, pattern=NOT_BLANK)
    voice: str | None = Field(None, max_length=128, description="A speaker of the model, or an alias.")
    language: str | None = Field(None, max_length=32, description="For multilingual models (extension).")
    response_format: AudioFormat | None = Field(None, description="wav (default here), flac, or raw 16-bit pcm.")
    speed: float | None = Field(None, ge=1.0, le=1.0, description="Only 1.0 is supported.")
    instructions: str | None = Field(None, max_length=4096, description="Accepted and ignored.")
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="Left out: the whole file in one response. `audio`: the audio as it is made, sentence by "
        "sentence (pcm and wav; flac comes whole: its pieces do not join). `sse`: `speech.audio.delta` events "
        "with base64 audio, then `speech.audio.done` (pcm and wav).",
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")

    def to_service(self) -> VoiceRequest:
        return VoiceRequest(
            model=self.model,
            input=self.input,
            voice=self.voice,
            language=self.language,
            response_format=self.response_format or "wav",
            seed=self.seed,
        )


# --- models, tokens, errors -----------------------------------------------------------------------------
class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "content-studio"
    service: str


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizePromptRequest(OpenAIModel):
    """vLLM's ``/tokenize`` for a prompt."""

    model: str | None = Field(None, max_length=256)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    add_special_tokens: bool = True
    return_token_strs: bool = False

    def to_service(self) -> TextRequest:
        return TextRequest(model=self.model, prompt=self.prompt or " ")


class TokenizeChatRequest(OpenAIModel):
    """vLLM's ``/tokenize`` for chat messages, through the model's chat template."""

    model: str | None = Field(None, max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    add_generation_prompt: bool | None = Field(None, description="Accepted; chats always get one.")
    add_special_tokens: bool = False
    return_token_strs: bool = False

    def to_service(self) -> TextRequest:
        return TextRequest(model=self.model, messages=[m.to_service(n) for n, m in enumerate(self.messages)])


TokenizeRequest = TokenizePromptRequest | TokenizeChatRequest


class TokenizeResponse(OpenAIModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = Field(None, max_length=256)
    tokens: list[Annotated[int, Field(ge=0, le=10_000_000)]] = Field(max_length=32_000)


class DetokenizeResponse(OpenAIModel):
    prompt: str


class ErrorDetail(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIModel):
    """Every error: OpenAI's shape, ``param`` naming the field at fault."""

    error: ErrorDetail
    detail: list[dict[str, Any]] | None = Field(None, description="Every schema problem (422 only).")
