"""Configuration of the text service (its deployment's ``user_config``) and of its generation engine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployments.common import ServiceConfig, StrictModel

MAX_TOKENS_BOUND = 4096  # a hard schema bound; the model's context and the config may allow less
ArticleLength = Literal["short", "medium", "long"]


class KVCacheConfig(StrictModel):
    """The paged KV cache of the continuous batch. Defaults are safe on a 2-core CPU and on a GPU."""

    page_size: int = Field(32, ge=4, le=1024, description="Tokens per KV-cache page (one page per layer).")
    num_blocks: int | None = Field(
        None,
        ge=4,
        le=10_000_000,
        description="KV-cache blocks of `page_size` tokens. null: 256 on the CPU; on CUDA, sized from "
        "`gpu_memory_share`.",
    )
    gpu_memory_share: float = Field(
        0.5,
        gt=0.0,
        le=0.95,
        description="On CUDA with `num_blocks` null: share of the GPU memory left after loading the weights that "
        "the KV cache may take.",
    )
    max_batch_tokens: int = Field(
        256,
        ge=8,
        le=1_048_576,
        description="Token budget of one step: prompt chunks being prefilled plus one token per decoding request.",
    )
    max_requests_per_batch: int = Field(32, ge=1, le=4096, description="Most requests one step may hold.")
    prefix_sharing: bool = Field(
        True, description="Requests with the same prompt prefix (n > 1, a shared system prompt) share KV blocks."
    )


class EngineConfig(StrictModel):
    """Which engine generates, and how many requests it runs and queues. A change restarts the engine on the
    weights already loaded (requests in flight finish first); it never reloads the model."""

    kind: Literal["transformers"] = Field(
        "transformers",
        description="`transformers`: continuous batching over transformers' paged KV cache (CPU or CUDA). The "
        "seam (deployments/text/engine.py) takes other engines, e.g. vLLM on a GPU.",
    )
    kv_cache: KVCacheConfig = Field(default_factory=KVCacheConfig, description="Paged KV-cache sizing.")
    max_running: int = Field(32, ge=1, le=4096, description="Requests generating at once (in the running batch).")
    max_waiting: int = Field(
        128, ge=0, le=100_000, description="Requests waiting for a place; one more is refused with 503 + Retry-After."
    )
    kv_overcommit: float = Field(
        1.0,
        ge=1.0,
        le=8.0,
        description="Admit requests whose prompt + max_tokens add up to this many times the KV cache. 1.0: an "
        "admitted request never waits for blocks; above, the library preempts (recomputes) when blocks run out.",
    )
    retry_after_s: int = Field(2, ge=1, le=600, description="`Retry-After` when the engine's queue is full.")


class TextConfig(ServiceConfig):
    """Configuration of the text service (its deployment's ``user_config``)."""

    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub; off unless you trust it.")
    default_max_tokens: int = Field(128, ge=1, le=MAX_TOKENS_BOUND, description="`max_tokens` when omitted.")
    max_tokens_limit: int = Field(
        1024, ge=1, le=MAX_TOKENS_BOUND, description="Largest `max_tokens` a request may ask for."
    )
    default_temperature: float = Field(0.7, ge=0.0, le=2.0, description="`temperature` when omitted.")
    default_top_p: float = Field(0.95, gt=0.0, le=1.0, description="`top_p` when omitted.")
    max_context_tokens: int | None = Field(
        None, ge=8, description="Prompt + completion token budget; defaults to the model's own context length."
    )
    max_choices: int = Field(8, ge=1, le=64, description="Largest `n` (and `best_of`) a request may ask for.")
    max_logprobs: int = Field(20, ge=0, le=20, description="Most alternatives per token (`top_logprobs`).")
    tool_call_parser: Literal["hermes"] | None = Field(
        None,
        description="How to read tool calls the model writes by itself (`tool_choice: auto`): `hermes` reads "
        "`<tool_call>{json}</tool_call>` (Qwen2.5, Hermes). null: `auto` with tools is refused (400).",
    )
    structured_closing_reserve: int = Field(
        24,
        ge=0,
        le=1024,
        description="Structured output: when this few tokens of the budget are left, the engine steers the JSON "
        "to its shortest valid end, so the answer always parses (finish_reason `length`).",
    )
    health_probe: bool = Field(
        True, description="Health checks generate one token through the engine: the model answers, not only lives."
    )
    article_system_prompt: str = Field(
        "You are a staff writer. Answer with the article as JSON with a title and a body.",
        max_length=4000,
        description="System message for articles written for the content pipeline.",
    )
    article_prompt: str = Field(
        "Write a {length}, {style} article about: {topic}",
        max_length=4000,
        description="User message for articles; `{topic}`, `{style}` and `{length}` are filled in.",
    )
    article_tokens: dict[ArticleLength, int] = Field(
        default_factory=lambda: {"short": 128, "medium": 320, "long": 640},
        description="Token budget of an article per requested length (capped by `max_tokens_limit`).",
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="The generation engine: continuous batching and its KV cache."
    )
