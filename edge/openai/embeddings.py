"""``POST /v1/embeddings``: OpenAI's embeddings API over the embedding service (deployments/embed.py), its wire
models beside its route (a small family: one request, one answer).

``input`` is a string, a list of strings, a list of token ids or a list of them; ``encoding_format`` ``float``
answers lists of numbers, ``base64`` the little-endian float32 bytes (what the ``openai`` client asks for by
default, and decodes itself); ``dimensions`` shortens the vectors (renormalised)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import Field

from deployments.embed import MAX_INPUT_CHARS, MAX_INPUTS, EmbedRequest, EmbedResult
from edge.dependencies import IngressDep, error_responses
from edge.openai.protocol import NOT_BLANK, OpenAIModel

router = APIRouter(tags=["OpenAI"])
Text = Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS, pattern=NOT_BLANK)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=10_000_000)]], Field(min_length=1, max_length=32_000)]


class EmbeddingRequest(OpenAIModel):
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]
    ) = Field(description="A text, a list of texts, token ids, or a list of token-id lists.")
    model: str | None = Field(None, max_length=256, description="The served model's name (see /v1/models).")
    encoding_format: Literal["float", "base64"] | None = Field(None, description="`float` (default) or `base64`.")
    dimensions: int | None = Field(None, ge=1, le=100_000, description="Keep this many dimensions, renormalised.")
    user: str | None = Field(None, max_length=256, description="End-user id (accepted; embeddings run no experiment).")

    def to_service(self) -> EmbedRequest:
        given = self.input
        if isinstance(given, str):
            return EmbedRequest(model=self.model, texts=[given], dimensions=self.dimensions)
        if given and isinstance(given[0], str):
            return EmbedRequest(model=self.model, texts=list(given), dimensions=self.dimensions)  # type: ignore[arg-type]
        if given and isinstance(given[0], int):
            return EmbedRequest(model=self.model, token_ids=[list(given)], dimensions=self.dimensions)  # type: ignore[arg-type]
        return EmbedRequest(model=self.model, token_ids=[list(ids) for ids in given], dimensions=self.dimensions)  # type: ignore[union-attr]


class Embedding(OpenAIModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or its float32 bytes in base64.")


class EmbeddingUsage(OpenAIModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    @classmethod
    def of(cls, result: EmbedResult, encoding: str) -> EmbeddingResponse:
        def encoded(vector: list[float]) -> list[float] | str:
            if encoding == "base64":
                return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            return vector

        data = [Embedding(index=n, embedding=encoded(v)) for n, v in enumerate(result.vectors)]
        usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
        return cls(data=data, model=result.model, usage=usage)


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=error_responses(400, 404, 503, 504))
async def embeddings(body: EmbeddingRequest, ingress: IngressDep) -> EmbeddingResponse:
    result: EmbedResult = await ingress.call("embed", "embed", body.to_service())
    return EmbeddingResponse.of(result, body.encoding_format or "float")
