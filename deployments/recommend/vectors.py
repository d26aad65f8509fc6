"""Content vectors in constant time per item: a new item is vectorised once, when it arrives, independently of
the catalogue (no vocabulary to refit, no corpus statistics), so registering content costs the same at ten items
and at a million.

Words (English stop words removed) are hashed with signs into ``dim`` buckets (feature hashing: the expected dot
product of two hashed vectors is the dot product of their word counts), then L2-normalised: cosine similarity of
texts. Stored as float16 with the item.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ContentEncoder:
    """Text to a unit vector of ``dim`` floats; stateless (nothing is fitted), so every replica agrees."""

    def __init__(self, dim: int = 256) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self._vectorizer = HashingVectorizer(
            n_features=dim, alternate_sign=True, norm="l2", stop_words="english", dtype=np.float32
        )
        self.encoded = 0  # texts vectorised by this encoder (tests count them: adding one item encodes one)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._vectorizer.transform(texts).toarray(), dtype=np.float32)


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f2").tobytes()


def from_bytes(blob: bytes | None, dim: int) -> np.ndarray | None:
    if not blob:
        return None
    vector = np.frombuffer(blob, dtype="<f2").astype(np.float32)
    return vector if vector.size == dim else None  # another dimension: re-vectorise from the text


def unit_rows(matrix: Any) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms
