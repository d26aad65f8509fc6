"""Embedding service: a ``transformers`` encoder turns texts into unit vectors (retrieval, search, recommendations).

The encoder loads through ``AutoModel`` / ``AutoTokenizer.from_pretrained``; a text's vector is the mean of its
token states (or the first token's, ``pooling: cls``, as BGE models want), L2-normalised, so a dot product is a
cosine. ``dimensions`` keeps the first dimensions of the vector and normalises again (how OpenAI's
``text-embedding-3`` models and Matryoshka-trained encoders shorten theirs). Requests that arrive together are
encoded in one padded batch (``@serve.batch``, merged by a ``Coalescer``), like the image service's renders.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from ray import serve

from deployments.batching import BatchedMethods, BatchingConfig
from deployments.common import (
    ServiceConfig,
    StrictModel,
    memory_bytes,
    resolve_dtype,
    resolve_model_source,
    resolve_placement,
)
from deployments.errors import InvalidRequest
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
MAX_INPUT_CHARS = 32_000


class EmbedConfig(ServiceConfig):
    """Configuration of the embedding service (its deployment's ``user_config``)."""

    pooling: Literal["mean", "cls"] = Field(
        "mean", description="How token states become one vector: their mean (sentence-transformers) or the first."
    )
    max_input_tokens: int | None = Field(
        None, ge=1, le=1_000_000, description="Longest input, in tokens; defaults to the model's own limit."
    )
    max_inputs: int = Field(256, ge=1, le=MAX_INPUTS, description="Most inputs one request may send.")
    health_probe: bool = Field(True, description="Health checks encode one short text.")
    batching: BatchingConfig = Field(
        default_factory=lambda: BatchingConfig(max_batch_size=32),
        description="Dynamic batching: inputs of requests that arrive together are encoded in one batch.",
    )


class EmbedRequest(StrictModel):
    """Texts (or token ids) to encode; ``dimensions`` shortens the vectors."""

    model: str | None = Field(None, max_length=256, description="Model asked for; must be the one served.")
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_INPUTS)
    token_ids: list[list[int]] | None = Field(None, min_length=1, max_length=MAX_INPUTS)
    dimensions: int | None = Field(None, ge=1, le=100_000, description="Keep this many dimensions, renormalised.")

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> EmbedRequest:
        if (self.texts is None) == (self.token_ids is None):
            raise ValueError("give exactly one of `texts` or `token_ids`")
        return self

    @property
    def count(self) -> int:
        return len(self.texts or self.token_ids or [])


class EmbedResult(StrictModel):
    vectors: list[list[float]] = Field(description="One unit vector per input, in order.")
    prompt_tokens: int
    dimensions: int
    model: str


@dataclass(frozen=True)
class EmbedJob:
    """One request's validated inputs, tokenised (so a batch pads them together)."""

    token_ids: list[list[int]]
    dimensions: int


class EmbeddingService:
    """Loads an encoder and its tokenizer, and turns texts into unit vectors."""

    def __init__(self, config: EmbedConfig, model: Any = None, tokenizer: Any = None) -> None:
        self.config = config
        self.placement = resolve_placement(config.device)
        self.dtype = resolve_dtype(config.dtype, self.placement.device)
        if model is None or tokenizer is None:
            from transformers import AutoModel, AutoTokenizer

            source = resolve_model_source(config.model)
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source, dtype=self.dtype)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.tokenizer = tokenizer
        self.encoder = model.to(self.placement.device).eval()
        self.dim = int(self.encoder.config.hidden_size)
        self.vocab_size = int(self.encoder.get_input_embeddings().weight.shape[0])
        self._lock = threading.Lock()  # one forward pass at a time per replica

    @property
    def max_tokens(self) -> int:
        limit = getattr(self.encoder.config, "max_position_embeddings", None) or 512
        return min(self.config.max_input_tokens or limit, limit)

    def apply_config(self, config: EmbedConfig) -> None:
        self.config = config

    def close(self) -> None:
        """Nothing runs in the background."""

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "dimensions": self.dim,
            "max_input_tokens": self.max_tokens,
            "pooling": self.config.pooling,
            "gpu_memory_bytes": memory_bytes(self.placement.device),
        }

    def check_health(self) -> None:
        if self.config.health_probe:
            self.embed(EmbedRequest(texts=["ok"]))

    def prepare(self, request: EmbedRequest) -> EmbedJob:
        """Validate against the model and config, and tokenise: everything before the forward pass."""
        cfg = self.config
        cfg.check_model(request.model)
        if request.count > cfg.max_inputs:
            raise InvalidRequest.for_field("input", f"at most {cfg.max_inputs} inputs per request for this model")
        dimensions = request.dimensions or self.dim
        if dimensions > self.dim:
            raise InvalidRequest.for_field("dimensions", f"must be at most {self.dim} for this model")
        if request.token_ids is not None:
            ids = [list(one) for one in request.token_ids]
            if any(not one for one in ids):
                raise InvalidRequest.for_field("input", "a token-id input must not be empty")
            if any(t < 0 or t >= self.vocab_size for one in ids for t in one):
                raise InvalidRequest.for_field("input", f"token ids must be between 0 and {self.vocab_size - 1}")
        else:
            texts = request.texts or []
            if any(not text.strip() for text in texts):
                raise InvalidRequest.for_field("input", "an input must not be empty")
            ids = [list(one) for one in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        longest = max(len(one) for one in ids)
        if longest > self.max_tokens:
            raise InvalidRequest.for_field(
                "input", f"an input is {longest} tokens; this model reads at most {self.max_tokens}"
            )
        return EmbedJob(token_ids=ids, dimensions=dimensions)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        return self.encode([self.prepare(request)])[0]

    def encode(self, jobs: list[EmbedJob]) -> list[EmbedResult]:
        """Encode the inputs of several requests in one padded forward pass."""
        import torch

        rows = [ids for job in jobs for ids in job.token_ids]
        width = max(len(ids) for ids in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in rows], device=self.placement.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows], device=input_ids.device)
        with self._lock, torch.inference_mode():
            states = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        if self.config.pooling == "cls":
            pooled = states[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        results, start = [], 0
        for job in jobs:
            vectors = pooled[start : start + len(job.token_ids), : job.dimensions]
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
            results.append(
                EmbedResult(
                    vectors=vectors.cpu().tolist(),
                    prompt_tokens=sum(len(ids) for ids in job.token_ids),
                    dimensions=job.dimensions,
                    model=self.config.name,
                )
            )
            start += len(job.token_ids)
        return results


@serve.deployment(name="embed")
class EmbedDeployment(BatchedMethods, ModelReplica[EmbedConfig, EmbeddingService]):
    service: ClassVar[str] = "embed"
    config_cls = EmbedConfig
    batched_methods = ("_encode_batch",)

    def load_model(self, config: EmbedConfig) -> EmbeddingService:
        return EmbeddingService(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, EmbedResult):
            telemetry.count("content_studio_embeddings", len(result.vectors), model=result.model)
            telemetry.count("content_studio_embedding_tokens", result.prompt_tokens, model=result.model)

    def batch_runner(self, model: EmbeddingService) -> Callable[..., list[EmbedResult]]:
        return lambda jobs, *_: model.encode(jobs)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, jobs: list[EmbedJob]) -> list[EmbedResult]:
        return await self.coalescer_for(self.model).submit(jobs)

    async def _encode(self, request: EmbedRequest) -> EmbedResult:
        return await self.run_one(self.model.prepare(request), self._encode_batch)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await self.measure("embed", (request,), lambda: self._encode(request))
