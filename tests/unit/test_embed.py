"""The embedding service on the tiny encoder through ``AutoModel`` / ``AutoTokenizer``, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.embed import EmbedConfig, EmbeddingService, EmbedRequest
from deployments.errors import ServiceError


@pytest.fixture(scope="module")
def service(tiny_models) -> EmbeddingService:
    return EmbeddingService(EmbedConfig(model=str(tiny_models / "embed"), served_model_name="tiny-bert", max_inputs=8))


def test_vectors_are_unit_length_one_per_input_in_order(service: EmbeddingService) -> None:
    texts = ["a lighthouse by the sea", "bread", "the keeper's lantern at night"]
    result = service.embed(EmbedRequest(texts=texts))
    vectors = np.asarray(result.vectors)
    assert vectors.shape == (3, service.dim) and result.dimensions == service.dim
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    alone = [service.embed(EmbedRequest(texts=[t])).vectors[0] for t in texts]
    assert np.allclose(vectors, alone, atol=1e-5)  # padded in a batch or alone: the same vector
    assert result.prompt_tokens == sum(len(service.tokenizer(t)["input_ids"]) for t in texts)


def test_requests_batched_together_get_their_own_vectors(service: EmbeddingService) -> None:
    jobs = [service.prepare(EmbedRequest(texts=["tides"])), service.prepare(EmbedRequest(texts=["owls", "bees"]))]
    first, second = service.encode(jobs)
    assert len(first.vectors) == 1 and len(second.vectors) == 2
    assert np.allclose(first.vectors[0], service.embed(EmbedRequest(texts=["tides"])).vectors[0], atol=1e-5)


def test_dimensions_keep_the_first_ones_renormalised(service: EmbeddingService) -> None:
    full = np.asarray(service.embed(EmbedRequest(texts=["tides"])).vectors[0])
    short = np.asarray(service.embed(EmbedRequest(texts=["tides"], dimensions=8)).vectors[0])
    assert short.shape == (8,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)


def test_token_ids_are_encoded_as_given(service: EmbeddingService) -> None:
    ids = service.tokenizer("tides")["input_ids"]
    by_ids = service.embed(EmbedRequest(token_ids=[ids])).vectors[0]
    assert np.allclose(by_ids, service.embed(EmbedRequest(texts=["tides"])).vectors[0], atol=1e-5)


@pytest.mark.parametrize(
    ("request_fields", "field", "status"),
    [
        ({"texts": ["x"] * 9}, "input", 400),  # above max_inputs
        ({"texts": ["x"], "dimensions": 4096}, "dimensions", 400),
        ({"token_ids": [[10_000_000]]}, "input", 400),
        ({"texts": ["x " * 400]}, "input", 400),  # longer than the encoder reads
        ({"texts": ["x"], "model": "other"}, "model", 404),
    ],
)
def test_bad_requests_name_the_field(service: EmbeddingService, request_fields: dict, field: str, status: int) -> None:
    with pytest.raises(ServiceError) as err:
        service.embed(EmbedRequest(**request_fields))
    assert (err.value.param, err.value.status) == (field, status)
