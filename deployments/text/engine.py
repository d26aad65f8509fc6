"""The seam between the text service and whatever generates tokens.

The replica talks to its generation engine through ``GenerationEngine``: ``submit`` a tokenised request with its
sampling parameters, ``stream`` what it generates, ``cancel`` it, ``describe`` the engine (its KV cache, its
queue). Prompts, chat templates, stop strings, detokenisation and the OpenAI shapes stay on the service's side, so
another engine (vLLM on a GPU, say) plugs in by implementing these few methods and naming itself in
``engine.kind`` of the text config.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]
GREEDY_BELOW = 1e-5  # a temperature this close to 0 would overflow the softmax: it means greedy (as in vLLM)


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is sampled; an engine applies every field inside its running batch."""

    max_tokens: int
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: plus the k most likely alternatives
    grammar: str | None = None  # an llguidance grammar (structured output, tool arguments)
    closing_reserve: int = 24  # structured output: tokens kept to close the JSON before max_tokens

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0)


@dataclass
class TokenChoice:
    """A generated (or prompt) token with its log probability and the most likely alternatives, when asked."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class EngineRequest:
    """One sequence to generate: prompt token ids and how to sample."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    group: str | None = None  # the request this sequence belongs to: its sequences wait as one (None: its own)


@dataclass
class EngineOutput:
    """What a sequence generated since the last output; ``finish_reason`` is set on its last one."""

    tokens: list[TokenChoice] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    forced_close: bool = False  # structured output closed early because the token budget ran out

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class GenerationEngine(Protocol):
    """What the text service needs from a generation engine."""

    context_length: int  # longest prompt + completion one sequence may have on this engine

    def start(self) -> None:
        """Start generating (load nothing new: weights come with the engine's construction)."""

    async def submit(self, request: EngineRequest) -> None:
        """Admit the request (it joins the running batch at the next step), waiting for room in the queue;
        raise ``Unavailable`` (with ``retry_after_s``) when the queue is full."""

    def stream(self, request_id: str) -> AsyncIterator[EngineOutput]:
        """Outputs of a submitted request as it generates, ending with the one that has a finish reason."""

    def cancel(self, request_id: str) -> None:
        """Stop a request now and free what it holds (KV blocks, its place in the batch)."""

    async def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[TokenChoice | None]:
        """Log probability of each prompt token given the ones before it (the first has none)."""

    def describe(self) -> dict[str, Any]:
        """Kind, KV cache size and use, running and waiting requests."""

    def close(self, drain_s: float = 120.0, wait: bool = False) -> None:
        """Stop taking requests; those running finish first (up to ``drain_s``), then the engine frees what it
        holds. Returns at once unless ``wait``."""
