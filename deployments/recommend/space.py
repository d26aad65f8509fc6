"""Every item a request may rank, trained or not, and how new items get factors before anyone touched them.

The space grows one item at a time: a registered item arrives with its content vector (computed once, see
``vectors.py``); its factors are estimated from its content neighbours among trained items, and it joins the ANN
indexes, with no rebuild and no pass over the catalogue. Building the whole space (every item, every index) is a
training-time job: the result is saved with the version, and a replica loads it and adds only what arrived since.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployments.recommend.ann import Dtype, Metric, VectorIndex
from deployments.recommend.model import FactorModel
from deployments.recommend.vectors import Encoder, unit_rows

SPACE_FILE = "space.npz"
EXACT_NEIGHBOURS_BELOW = 4096  # trained items: below, a new item's neighbours are searched exactly
_NO_ROWS = np.zeros(0, np.int64)


# The three indexes (recommendations, similar items, content) and how each is built. Measured on the bench's
# catalogue (100k items, 2 cores): the 32-d factor graphs lose recall@10 fast below expansion 128 (0.99 -> 0.94),
# while the 256-d content graph builds in half the time at expansion 64 with the same recall (0.984); storing it
# as float16 (as the vectors are stored at rest) halves its memory for 0.008 of recall, searches as fast.
@dataclass(frozen=True)
class IndexSpec:
    metric: Metric
    dtype: Dtype = "f32"
    expansion_add: int = 128


INDEXES = {
    "factors": IndexSpec("ip"),
    "unit": IndexSpec("cos"),
    "content": IndexSpec("cos", dtype="f16", expansion_add=64),
}


@dataclass(frozen=True)
class SpaceSettings:
    neighbours: int = 10  # trained items a new item's factors are estimated from
    approximate: bool = True  # keep ANN indexes (candidates then exact re-ranking)
    expansion_search: int = 128


class ItemSpace:
    """Rows: item ids, factors (trained or estimated), unit factors, content vectors and a trained flag; append
    only. Readers slice the first ``n`` rows; ``add`` holds a lock and swaps grown arrays in whole."""

    def __init__(self, factors_dim: int, content_dim: int, settings: SpaceSettings) -> None:
        self.settings = settings
        self.item_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.n = 0
        self._factors = np.zeros((0, factors_dim), np.float32)
        self._unit = np.zeros((0, factors_dim), np.float32)
        self._content = np.zeros((0, content_dim), np.float32)
        self.encoder_key: str | None = None  # the encoder that made its content vectors
        self._trained = np.zeros(0, bool)
        self.watermark = 0.0  # created_at of the newest registered item in the space
        self.indexes: dict[str, VectorIndex] = {}
        if settings.approximate:
            self.indexes = {name: self._new_index(name) for name in INDEXES}
        self._lock = threading.RLock()
        self.estimates = 0  # new items whose factors were estimated (tests count work, not time)

    def _new_index(self, name: str) -> VectorIndex:
        spec = INDEXES[name]
        dim = self._content.shape[1] if name == "content" else self._factors.shape[1]
        return VectorIndex(dim, spec.metric, self.settings.expansion_search, spec.dtype, spec.expansion_add)

    # --- reading ------------------------------------------------------------------------------------------
    @property
    def factors(self) -> np.ndarray:
        return self._factors[: self.n]

    @property
    def unit(self) -> np.ndarray:
        return self._unit[: self.n]

    @property
    def content(self) -> np.ndarray:
        return self._content[: self.n]

    @property
    def trained(self) -> np.ndarray:
        return self._trained[: self.n]

    def profile(self, weights: dict[str, float]) -> np.ndarray | None:
        """A user's content profile: the weighted, normalised sum of the vectors of what they touched."""
        rows = [(self.index[i], w) for i, w in weights.items() if i in self.index]
        if not rows:
            return None
        idx, w = zip(*rows, strict=True)
        vector = np.asarray(w, dtype=np.float32) @ self._content[list(idx)]
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else None

    def candidates(self, queries: dict[str, np.ndarray | None], counts: dict[str, int]) -> np.ndarray:
        """Rows the ANN indexes find for these queries (by index name; ``counts[name]`` rows each), merged;
        exact re-ranking follows."""
        found = [
            self.indexes[name].search(query, counts[name])
            for name, query in queries.items()
            if query is not None and name in self.indexes
        ]
        if not found:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(found))

    # --- growing ------------------------------------------------------------------------------------------
    def add(
        self,
        item_ids: list[str],
        content: np.ndarray,
        factors: np.ndarray | None = None,
        trained: np.ndarray | None = None,
        created_at: float = 0.0,
    ) -> int:
        """Append items (those already here are skipped). Without ``factors`` they are new: their factors are
        estimated from their content neighbours among trained items. Returns how many were added."""
        with self._lock:
            keep = [n for n, i in enumerate(item_ids) if i not in self.index]
            self.watermark = max(self.watermark, created_at)
            if not keep:
                return 0
            ids = [item_ids[n] for n in keep]
            content = np.asarray(content, np.float32)[keep]
            if factors is None:
                factors = self._estimate(content)
                trained = np.zeros(len(ids), bool)
            else:
                factors = np.asarray(factors, np.float32)[keep]
                trained = np.asarray(trained, bool)[keep] if trained is not None else np.ones(len(ids), bool)
            start = self.n
            self._reserve(start + len(ids))
            unit = unit_rows(factors)
            self._factors[start : start + len(ids)] = factors
            self._unit[start : start + len(ids)] = unit
            self._content[start : start + len(ids)] = content
            self._trained[start : start + len(ids)] = trained
            for offset, item_id in enumerate(ids):
                self.index[item_id] = start + offset
            self.item_ids.extend(ids)
            if self.indexes:
                self.indexes["factors"].add(start, factors)
                self.indexes["unit"].add(start, unit)
                self.indexes["content"].add(start, content)
            self.n = start + len(ids)
            return len(ids)

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._factors):
            return
        capacity = max(rows, 2 * len(self._factors), 64)

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *array.shape[1:]), array.dtype)
            out[: self.n] = array[: self.n]
            return out

        # New arrays are filled, then swapped in: a reader holding the old ones still sees valid rows.
        self._factors, self._unit = grown(self._factors), grown(self._unit)
        self._content, self._trained = grown(self._content), grown(self._trained)

    def _estimate(self, content: np.ndarray) -> np.ndarray:
        """Factors of items just registered: the similarity-weighted mean of their nearest trained items'
        factors, found through the content index (over-fetched, then only trained ones kept) or, on a small
        space, among every trained item."""
        k = self.settings.neighbours
        out = np.zeros((len(content), self._factors.shape[1]), np.float32)
        trained_rows = np.flatnonzero(self.trained)
        if not trained_rows.size:
            return out
        for row, vector in enumerate(content):
            self.estimates += 1
            if not np.any(vector):
                continue
            if self.indexes and self.n > EXACT_NEIGHBOURS_BELOW:
                rows = self.indexes["content"].search(vector, 8 * k)
                rows = rows[self._trained[rows]]
            else:
                rows = trained_rows
            out[row] = _weighted_factors(self._content[rows] @ vector, self._factors[rows], k)
        return out

    def _index_all(self, content: VectorIndex | None = None, indexed: np.ndarray = _NO_ROWS) -> None:
        """Every row into fresh indexes, on every core (a training-time build). ``content``: a content index
        that already holds the rows ``indexed`` (the build's neighbour search); the rest are added to it."""
        self.indexes = {name: self._new_index(name) for name in ("factors", "unit")}
        self.indexes["factors"].add(0, self.factors, threads=0)
        self.indexes["unit"].add(0, self.unit, threads=0)
        if content is None:
            content = self._new_index("content")
        rest = np.setdiff1d(np.arange(self.n), indexed)
        content.add_rows(rest, self.content[rest], threads=0)
        self.indexes["content"] = content

    # --- whole versions -----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        snapshot: FactorModel,
        registered: list[tuple[str, np.ndarray]],
        encoder: Encoder,
        settings: SpaceSettings,
        watermark: float = 0.0,
    ) -> ItemSpace:
        """Every item of a version and every registered item (vectors given), factors estimated for those
        without events, and the indexes over all of them: the training-time build, saved with the version."""
        factors = np.asarray(snapshot.model.item_factors, dtype=np.float32)
        trained_flags = np.diff(snapshot.user_items.tocsc().indptr) > 0 if snapshot.item_ids else np.zeros(0, bool)
        known = dict(registered)
        ids = list(snapshot.item_ids)
        vectors = np.zeros((len(ids), encoder.dim), np.float32)
        missing = [n for n, item_id in enumerate(ids) if item_id not in known]
        for n, item_id in enumerate(ids):
            if item_id in known:
                vectors[n] = known[item_id]
        if missing:  # items of a seed that were never registered: vectorise their texts once, here
            vectors[missing] = encoder.encode([snapshot.item_texts.get(ids[n], "") for n in missing])
        extra = [(i, v) for i, v in registered if i not in snapshot.item_index]
        ids += [i for i, _ in extra]
        content = np.concatenate(
            [vectors.reshape(-1, encoder.dim), np.asarray([v for _, v in extra], np.float32).reshape(-1, encoder.dim)]
        )
        trained = np.concatenate([trained_flags, np.zeros(len(extra), bool)])
        all_factors = np.zeros((len(ids), factors.shape[1]), np.float32)
        all_factors[: len(snapshot.item_ids)] = np.where(trained_flags[:, None], factors, 0.0)
        cold, warm = np.flatnonzero(~trained), np.flatnonzero(trained)
        space = cls(factors.shape[1], encoder.dim, SpaceSettings(settings.neighbours, False, settings.expansion_search))
        space.settings = settings
        content_index = None
        if cold.size and warm.size > EXACT_NEIGHBOURS_BELOW:
            # The content index of the trained items finds the untrained items' neighbours; when the space keeps
            # indexes it then takes in the untrained items too: built once, not again for serving.
            content_index = space._new_index("content")
            content_index.add_rows(warm, content[warm], threads=0)
            all_factors[cold] = _estimate_from_index(content[cold], content_index, content, all_factors, settings)
        elif cold.size and warm.size:
            all_factors[cold] = _estimate_exactly(content[cold], content[warm], all_factors[warm], settings)
        space.add(ids, content, all_factors, trained)
        if settings.approximate:
            space._index_all(content_index, warm if content_index is not None else _NO_ROWS)
        space.watermark = watermark
        space.encoder_key = encoder.key
        return space

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        np.savez(
            folder / SPACE_FILE,
            item_ids=np.asarray(self.item_ids, dtype=str),
            factors=self.factors,
            content=self.content.astype(np.float16),
            trained=self.trained,
        )
        meta = {"watermark": self.watermark, "approximate": bool(self.indexes), "encoder": self.encoder_key}
        (folder / "space.json").write_text(json.dumps(meta))
        for name, index in self.indexes.items():
            index.save(folder / f"ann-{name}.usearch")

    @classmethod
    def load(cls, folder: Path, settings: SpaceSettings) -> ItemSpace | None:
        """The space saved with a version, or None (a version without one, or saved with other settings)."""
        folder = Path(folder)
        if not (folder / SPACE_FILE).exists():
            return None
        meta = json.loads((folder / "space.json").read_text())
        if bool(meta.get("approximate")) != settings.approximate:
            return None
        with np.load(folder / SPACE_FILE, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        factors, content = arrays["factors"].astype(np.float32), arrays["content"].astype(np.float32)
        space = cls(factors.shape[1], content.shape[1], SpaceSettings(settings.neighbours, False))
        space.add([str(i) for i in arrays["item_ids"]], content, factors, arrays["trained"])
        space.settings = settings
        if settings.approximate:
            for name, spec in INDEXES.items():
                dim = content.shape[1] if name == "content" else factors.shape[1]
                space.indexes[name] = VectorIndex.load(
                    folder / f"ann-{name}.usearch", dim, spec.metric, settings.expansion_search
                )
        space.watermark = float(meta.get("watermark", 0.0))
        space.encoder_key = meta.get("encoder") or f"hashed:{content.shape[1]}"  # older versions: hashed words
        return space

    def describe(self) -> dict[str, Any]:
        return {"items": self.n, "trained_items": int(self.trained.sum()), "ann": bool(self.indexes)}


def _weighted_factors(sims: np.ndarray, factors: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-sims)[:k]
    top = top[sims[top] > 0]
    if not top.size:
        return np.zeros(factors.shape[1], np.float32)
    return (sims[top, None] * factors[top]).sum(0) / sims[top].sum()


def _estimate_exactly(
    cold: np.ndarray, warm: np.ndarray, warm_factors: np.ndarray, settings: SpaceSettings
) -> np.ndarray:
    """Factors of many untrained items at once, from their nearest trained items by exact search (a small set
    of trained items; larger ones go through a content index, ``_estimate_from_index``)."""
    k = min(settings.neighbours, len(warm))
    out = np.zeros((len(cold), warm_factors.shape[1]), np.float32)
    for start in range(0, len(cold), 1024):
        sims = cold[start : start + 1024] @ warm.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0)
        total = weights.sum(axis=1, keepdims=True)
        total[total == 0] = 1.0
        out[start : start + len(sims)] = np.einsum("rk,rkf->rf", weights / total, warm_factors[top])
    return out


def _estimate_from_index(
    cold: np.ndarray, index: VectorIndex, content: np.ndarray, factors: np.ndarray, settings: SpaceSettings
) -> np.ndarray:
    """Factors of untrained items from their ``k`` nearest rows in ``index`` (which holds only trained rows;
    its keys are row numbers of ``content`` and ``factors``), batch-searched on every core."""
    k = settings.neighbours
    out = np.zeros((len(cold), factors.shape[1]), np.float32)
    for start in range(0, len(cold), 65536):
        block = cold[start : start + 65536]
        rows = index.search_many(block, k)
        for row, found in enumerate(rows):
            found = found[found >= 0]
            if found.size:
                out[start + row] = _weighted_factors(content[found] @ block[row], factors[found], k)
    return out
