"""The OpenAI wire format's shared pieces: the strict base model, the sampling fields that completions and chat
share, the output constraints (``response_format``, vLLM's structured outputs), usage, errors and the model list.

Each API family keeps its own shapes beside this one (as vLLM keeps a protocol module per entrypoint):
``completions``, ``chat``, ``tokens``, ``media`` (images and speech), ``responses`` and ``embeddings``; the
handlers are the ``serving_*`` modules.

The request models are strict about types and bounds (a string where a number belongs, a negative ``max_tokens``:
422 naming the field) and tolerant of the OpenAI request shape: every standard field is declared, so a client
that sends ``frequency_penalty: 0``, ``stop: null`` or ``store: false`` is answered, not refused. Fields that mean
nothing here (``service_tier``, ``store``, ``metadata``, ``parallel_tool_calls``, ...) are accepted and ignored
(``IGNORED_FIELDS``, listed in docs/api.md); a field OpenAI does not have is still a 422 naming it. Each request
converts itself into the service request at the boundary (``to_service``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from deployments.common import SEED_MAX, JsonTyped
from deployments.errors import InvalidRequest
from deployments.text import MAX_PROMPT_CHARS, MAX_TOKENS_BOUND
from deployments.text.schemas import FUNCTION_NAME, MAX_GRAMMAR_CHARS, MAX_LOGIT_BIAS, MAX_STOPS, ResponseFormat

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


class SamplingFields(OpenAIModel):
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


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "content-studio"
    service: str


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIModel):
    """Every error: OpenAI's shape, ``param`` naming the field at fault."""

    error: ErrorDetail
    detail: list[dict[str, Any]] | None = Field(None, description="Every schema problem (422 only).")
