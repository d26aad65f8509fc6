"""Requests and results of the text service (what the ingress and the pipeline send it and get back).

These are the service's own, strict shapes; the OpenAI request models (edge/openai/chat.py, completions.py) accept the
whole OpenAI surface and convert themselves into a ``TextRequest`` at the boundary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from deployments.common import SEED_MAX, StrictModel
from deployments.text.config import MAX_TOKENS_BOUND

MAX_PROMPT_CHARS = 32_000
MAX_STOPS = 4
MAX_LOGIT_BIAS = 300
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class ToolCallFunction(StrictModel):
    name: str = Field(max_length=64)
    arguments: str = Field(max_length=MAX_PROMPT_CHARS, description="The arguments, as a JSON text.")


class ToolCall(StrictModel):
    id: str = Field(max_length=128)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field("", max_length=MAX_PROMPT_CHARS)
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=128)


class FunctionSpec(StrictModel):
    """A tool the model may call: its name, what it does, and a JSON schema of its arguments."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=4000)
    parameters: dict[str, Any] | None = Field(None, description="JSON schema of the arguments.")


MAX_GRAMMAR_CHARS = 100_000


class ResponseFormat(StrictModel):
    """The shape the output must take, enforced token by token: free text, any JSON object, JSON valid against a
    schema, text matching a regular expression, exactly one of several choices, or a Lark grammar (the shapes
    OpenAI's ``response_format`` and vLLM's structured outputs ask for)."""

    type: Literal["text", "json_object", "json_schema", "regex", "choice", "grammar"] = "text"
    json_schema: dict[str, Any] | None = Field(None, description="The schema, for `json_schema`.")
    regex: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="For `regex`.")
    choices: list[str] | None = Field(None, min_length=1, max_length=1024, description="For `choice`.")
    grammar: str | None = Field(None, min_length=1, max_length=MAX_GRAMMAR_CHARS, description="Lark, for `grammar`.")

    @model_validator(mode="after")
    def _what_the_type_needs(self) -> ResponseFormat:
        needed = {"json_schema": self.json_schema, "regex": self.regex, "choice": self.choices, "grammar": self.grammar}
        if self.type in needed and needed[self.type] is None:
            raise ValueError(f"`{self.type}` needs its `{ {'choice': 'choices'}.get(self.type, self.type) }`")
        return self


ToolChoice = Literal["none", "auto", "required"] | str  # a str other than the three names one function


class TextRequest(StrictModel):
    """One generation: a plain ``prompt`` or chat ``messages``, sampled as asked; omitted fields come from the
    service config. Every field is honoured inside the running continuous batch."""

    model: str | None = Field(None, max_length=256, description="Model asked for; must be the one served.")
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    prompt_token_ids: list[int] | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_BOUND, description="End-of-text is not allowed before this.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=100_000, description="Keep the k most likely tokens; 0: all.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens less likely than min_p x the likeliest.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOPS)
    ignore_eos: bool = Field(False, description="Keep generating past end-of-text, up to max_tokens.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    logit_bias: dict[int, float] = Field(default_factory=dict, max_length=MAX_LOGIT_BIAS)
    n: int = Field(1, ge=1, le=64, description="Choices to return.")
    best_of: int | None = Field(None, ge=1, le=64, description="Candidates to generate; the n likeliest return.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Log probabilities with this many alternatives.")
    echo: bool = Field(False, description="Return the prompt before the completion (with its logprobs if asked).")
    response_format: ResponseFormat | None = None
    tools: list[FunctionSpec] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = Field(None, max_length=64)
    group: str | None = Field(
        None,
        max_length=64,
        description="Requests of one group wait in the engine's queue as one request (the ingress sets it for the "
        "prompts of one streamed completion, each its own call).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TextRequest:
        if sum(x is not None for x in (self.prompt, self.prompt_token_ids, self.messages)) != 1:
            raise ValueError("give exactly one of `prompt`, `prompt_token_ids` or `messages`")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("`best_of` must be at least `n`")
        if any(not -100.0 <= b <= 100.0 for b in self.logit_bias.values()):
            raise ValueError("logit_bias values must be between -100 and 100")
        if any(t < 0 for t in self.logit_bias):
            raise ValueError("logit_bias keys must be token ids (>= 0)")
        return self


class TopLogprob(StrictModel):
    token: str
    token_id: int
    logprob: float | None = Field(description="None for the first prompt token: nothing comes before it.")
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top: list[TopLogprob] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "tool_calls"]


class Choice(StrictModel):
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None


class TextResult(StrictModel):
    """Every choice of a generation, with what it cost."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    model: str
    prompt_text: str | None = Field(None, description="The prompt as the model saw it (with `echo`).")
    prompt_logprobs: list[TokenLogprob] | None = Field(None, description="With `echo` and `logprobs`.")

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> FinishReason:
        return self.choices[0].finish_reason


class StreamStart(StrictModel):
    """First item of a text stream: the request was accepted by this model."""

    model: str
    prompt_tokens: int
    choices: int = 1
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


class ChoiceDelta(StrictModel):
    """New text of one choice (and the log probabilities of its tokens); the last one has a finish reason."""

    index: int = 0
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_arguments: str | None = Field(None, description="More of a named tool call's arguments.")
    tokens: int = Field(0, description="Tokens this delta covers (usage in every chunk, if asked).")

    def then(self, later: ChoiceDelta) -> ChoiceDelta | None:
        """This delta and the ``later`` one of the same choice as one (a stream's message may carry several
        tokens: OpenAI's clients cannot tell), or None where they cannot be one (another choice, or this one
        ended its choice)."""
        if later.index != self.index or self.finish_reason is not None or self.tool_calls is not None:
            return None
        logprobs = None
        if self.logprobs is not None or later.logprobs is not None:
            logprobs = [*(self.logprobs or ()), *(later.logprobs or ())]
        arguments = None
        if self.tool_call_arguments is not None or later.tool_call_arguments is not None:
            arguments = (self.tool_call_arguments or "") + (later.tool_call_arguments or "")
        return ChoiceDelta(
            index=self.index,
            text=self.text + later.text,
            logprobs=logprobs,
            finish_reason=later.finish_reason,
            tool_calls=later.tool_calls,
            tool_call_arguments=arguments,
            tokens=self.tokens + later.tokens,
        )


def coalesce(items: list[Any]) -> list[Any]:
    """Consecutive deltas of one choice as one delta; everything else as it was, in order. A stream sends what is
    ready in one message instead of one per token: the path pays its cost per message once per engine step at
    most, and less when it is behind (ray.serve.llm batches its streams by time instead, which adds latency)."""
    out: list[Any] = []
    for item in items:
        last = out[-1] if out else None
        merged = last.then(item) if isinstance(last, ChoiceDelta) and isinstance(item, ChoiceDelta) else None
        if merged is None:
            out.append(item)
        else:
            out[-1] = merged
    return out


class Tokenized(StrictModel):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = None
