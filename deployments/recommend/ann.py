"""Approximate nearest neighbours over the item space (usearch's HNSW): candidates in milliseconds at a million
items, re-ranked exactly by the caller. Items are added to a live index one by one (no rebuild); an index built at
training time is saved with the version, so every replica loads the same one.

Inner product (recommendations) is searched as it is. The norm-augmented transform to cosine ("XBOX": store
``[x, sqrt(M² - |x|²)]``, search ``[q, 0]``) was measured and is worse for HNSW: on 3,000 vectors of varied norm,
recall@10 against exact 0.66 against 0.996 for usearch's own inner-product graph. What limits recall at a million
items is the number of candidates, not the index (see ``profile_candidates`` in the config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

Metric = Literal["ip", "cos"]
Dtype = Literal["f32", "f16"]  # how the index stores vectors (searches run on float32 queries either way)


class VectorIndex:
    """Rows of an item matrix (keys = row numbers) searchable by inner product or cosine."""

    def __init__(
        self, dim: int, metric: Metric, expansion_search: int = 128, dtype: Dtype = "f32", expansion_add: int = 128
    ) -> None:
        from usearch.index import Index

        self.dim, self.metric = dim, metric
        self.index = Index(ndim=dim, metric=metric, dtype=dtype, connectivity=16, expansion_add=expansion_add)
        self.index.expansion_search = expansion_search

    def __len__(self) -> int:
        return len(self.index)

    def add(self, start: int, vectors: np.ndarray, threads: int = 1) -> None:
        """Rows ``start .. start + len(vectors)``; zero rows are skipped (they match nothing). ``threads`` 0:
        every core (a training-time build); 1 for items added while serving."""
        self.add_rows(np.arange(start, start + len(vectors)), vectors, threads)

    def add_rows(self, rows: np.ndarray, vectors: np.ndarray, threads: int = 1) -> None:
        """Rows by number (``vectors[n]`` is row ``rows[n]``); zero rows are skipped."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keep = np.flatnonzero(np.abs(vectors).sum(axis=1) > 0)
        if keep.size:
            self.index.add(np.asarray(rows, dtype=np.uint64)[keep], vectors[keep], threads=threads)

    def search_many(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Row numbers of the ``k`` best rows for each query (-1 pads); every core."""
        found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, threads=0)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        counts = np.asarray(found.counts).reshape(-1)
        mask = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        keys[mask] = -1
        return keys

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Row numbers of (about) the ``k`` best rows, best first."""
        if len(self.index) == 0 or not np.any(query):
            return np.zeros(0, dtype=np.int64)
        found = self.index.search(np.asarray(query, dtype=np.float32), min(k, len(self.index)))
        return np.asarray(found.keys, dtype=np.int64)

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    @classmethod
    def load(cls, path: Path, dim: int, metric: Metric, expansion_search: int = 128) -> VectorIndex:
        """The saved index as it was built (its file says how vectors are stored, so older versions load)."""
        out = cls(dim, metric, expansion_search)
        out.index.load(str(path))
        out.index.expansion_search = expansion_search
        return out
