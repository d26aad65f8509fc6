"""``/v1/completions``: the request (one service request per prompt) and the response, choices numbered across
prompts as OpenAI does."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import Field

from deployments.text import MAX_PROMPT_CHARS, TextRequest, TextResult
from deployments.text.schemas import Choice, TokenLogprob
from edge.openai.protocol import MAX_CHOICES, MAX_TOP_LOGPROBS, NOT_BLANK, OpenAIModel, SamplingFields, Usage

PromptText = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=NOT_BLANK)]
PromptTokens = Annotated[list[Annotated[int, Field(ge=0, le=10_000_000)]], Field(min_length=1, max_length=32_000)]


class CompletionRequest(SamplingFields):
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


# --- the response -----------------------------------------------------------------------------------------
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
