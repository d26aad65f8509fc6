"""Content vectors in constant time per item: a new item is vectorised once, when it arrives, independently of
the catalogue (no vocabulary to refit, no corpus statistics), so registering content costs the same at ten items
and at a million.

Two encoders, one interface (``dim``, ``key``, ``encode``), chosen by ``content_vectors`` in the config:
- ``hashed`` (the default): words (English stop words removed) hashed with signs into ``dim`` buckets (feature
  hashing: the expected dot product of two hashed vectors is the dot product of their word counts), then
  L2-normalised: cosine similarity of texts. Nothing fitted, nothing downloaded.
- ``embed``: the embedding service's vectors (a transformers encoder, deployments/embed.py), ``dim`` of them.

Vectors are stored as float16 with the item, tagged with their encoder's ``key``: a vector made by another
encoder (or at another size) is never mixed in; the item is vectorised again from its text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

MAGIC = b"CSv1"  # stored vectors: MAGIC + 8 bytes of the encoder's key digest + float16 values


class ContentEncoder:
    """Hashed words: text to a unit vector of ``dim`` floats; stateless (nothing is fitted), so every replica
    agrees."""

    def __init__(self, dim: int = 256) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self.key = f"hashed:{dim}"
        self._vectorizer = HashingVectorizer(
            n_features=dim, alternate_sign=True, norm="l2", stop_words="english", dtype=np.float32
        )
        self.encoded = 0  # texts vectorised by this encoder (tests count them: adding one item encodes one)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._vectorizer.transform(texts).toarray(), dtype=np.float32)


class ServiceEncoder:
    """The embedding service's unit vectors, through ``embed(texts, dimensions)`` (in a replica: a call of the
    embed deployment's handle), in chunks the service takes in one request."""

    def __init__(self, embed: Callable[[list[str], int], Any], dim: int, model: str, chunk: int = 256) -> None:
        self.embed, self.dim, self.chunk = embed, dim, chunk
        self.key = f"embed:{model}:{dim}"
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        parts = [
            np.asarray(self.embed([t if t.strip() else "-" for t in texts[n : n + self.chunk]], self.dim), np.float32)
            for n in range(0, len(texts), self.chunk)
        ]
        return np.concatenate(parts).reshape(-1, self.dim) if parts else np.zeros((0, self.dim), np.float32)


Encoder = ContentEncoder | ServiceEncoder


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()[:8]


def to_bytes(vector: np.ndarray, key: str) -> bytes:
    return MAGIC + _digest(key) + np.asarray(vector, dtype="<f2").tobytes()


def from_bytes(blob: bytes | None, encoder: Encoder) -> np.ndarray | None:
    """The stored vector when ``encoder`` made it, else None (vectorise the text again). Vectors stored before
    they were tagged are the hashed encoder's."""
    if not blob:
        return None
    if blob.startswith(MAGIC):
        if blob[len(MAGIC) : len(MAGIC) + 8] != _digest(encoder.key):
            return None
        blob = blob[len(MAGIC) + 8 :]
    elif not encoder.key.startswith("hashed:"):
        return None
    vector = np.frombuffer(blob, dtype="<f2").astype(np.float32)
    return vector if vector.size == encoder.dim else None


def unit_rows(matrix: Any) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms
