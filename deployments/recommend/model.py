"""What the recommender learned, as immutable snapshots it can swap atomically.

- ``FactorModel``: one trained version: implicit's factors (ALS or BPR, saved as ``.npz`` and loaded with
  ``allow_pickle=False``), the user and item id maps, the training matrix and item texts. A fresh install with
  no seed starts from ``FactorModel.empty()``.
- ``ModelRegistry``: a folder of versions plus a ``CURRENT`` pointer flipped with ``os.replace``; a retrain
  writes a whole new version beside the old one, so a reader sees the old version or the new one, never half.
- ``train_factors``: fits ALS or BPR on the seed matrix plus the recorded events.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployments.recommend.config import TrainingConfig

MODEL_FILES: dict[str, str] = {"als": "als.npz", "bpr": "bpr.npz"}
CURRENT = "CURRENT"


@dataclass(frozen=True)
class _EmptyFactors:
    """The factors of a model that has seen nothing yet."""

    user_factors: np.ndarray
    item_factors: np.ndarray


@dataclass(frozen=True)
class FactorModel:
    """One trained version of the recommender (never mutated: a retrain makes a new one)."""

    version: str
    algorithm: str
    model: Any
    user_ids: list[str]
    item_ids: list[str]
    user_items: Any  # scipy csr: users x items, the confidence the model was trained on
    item_texts: dict[str, str] = field(default_factory=dict)
    max_event_id: int = 0  # the last recorded event this version was trained on
    trained_at: float = 0.0

    @property
    def user_index(self) -> dict[str, int]:
        return self._index("_user_index", self.user_ids)

    @property
    def item_index(self) -> dict[str, int]:
        return self._index("_item_index", self.item_ids)

    def _index(self, name: str, ids: list[str]) -> dict[str, int]:
        cached = self.__dict__.get(name)
        if cached is None:
            cached = {key: n for n, key in enumerate(ids)}
            object.__setattr__(self, name, cached)
        return cached

    @classmethod
    def empty(cls, factors: int = 32) -> FactorModel:
        """What a fresh install knows before its first retrain: no users, no items (popular and fresh only)."""
        import scipy.sparse as sp

        model = _EmptyFactors(np.zeros((0, factors), np.float32), np.zeros((0, factors), np.float32))
        return cls(
            version="empty",
            algorithm="als",
            model=model,
            user_ids=[],
            item_ids=[],
            user_items=sp.csr_matrix((0, 0), dtype=np.float32),
        )

    def user_vector(self, user_id: str, row: Any, has_new_events: bool) -> np.ndarray | None:
        """The user's latent vector: trained, or recomputed from ``row`` (ALS) / folded in (BPR)."""
        idx = self.user_index.get(user_id)
        if idx is not None and not has_new_events:
            return np.asarray(self.model.user_factors[idx], dtype=np.float32)
        if not row.nnz:
            return None
        if self.algorithm == "als":
            return np.asarray(self.model.recalculate_user(0, row), dtype=np.float32)
        # BPR has no closed-form fold-in: the weighted mean of the items' factors, bias column kept at 1.
        weights = row.data / row.data.sum()
        vector = (self.model.item_factors[row.indices] * weights[:, None]).sum(axis=0).astype(np.float32)
        vector[-1] = 1.0
        return vector


def save_model_dir(
    out: Path,
    model: Any,
    matrix: Any,
    user_ids: Any,
    item_ids: Any,
    *,
    algorithm: str = "als",
    item_texts: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write a trained implicit model, its id maps, matrix and item texts in the layout ``load_model_dir`` reads."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / MODEL_FILES[algorithm]))
    matrix = matrix.tocsr()
    item_ids = np.asarray(item_ids, dtype=str)
    texts = item_texts or {}
    np.savez(
        out / "catalog.npz",
        user_ids=np.asarray(user_ids, dtype=str),
        item_ids=item_ids,
        item_texts=np.asarray([texts.get(str(i), "") for i in item_ids], dtype=str),
        data=matrix.data,
        indices=matrix.indices,
        indptr=matrix.indptr,
        shape=np.asarray(matrix.shape),
    )
    (out / "meta.json").write_text(json.dumps({"algorithm": algorithm, **(meta or {})}, indent=2))


def load_model_dir(folder: Path, version: str = "seed") -> FactorModel:
    """Load a model folder written by ``save_model_dir`` (``.npz`` files only, never pickles)."""
    import scipy.sparse as sp

    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {}
    algorithm = meta.get("algorithm", "als")
    cls = _model_class(algorithm)
    model = cls.load(str(folder / MODEL_FILES[algorithm]))
    with np.load(folder / "catalog.npz", allow_pickle=False) as data:
        catalog = {key: data[key] for key in data.files}
    item_ids = [str(i) for i in catalog["item_ids"]]
    texts = [str(t) for t in catalog["item_texts"]] if "item_texts" in catalog else []
    matrix = sp.csr_matrix((catalog["data"], catalog["indices"], catalog["indptr"]), shape=tuple(catalog["shape"]))
    return FactorModel(
        version=version,
        algorithm=algorithm,
        model=model,
        user_ids=[str(u) for u in catalog["user_ids"]],
        item_ids=item_ids,
        user_items=sp.csr_matrix(matrix, dtype=np.float32),
        item_texts={i: t for i, t in zip(item_ids, texts, strict=False) if t},
        max_event_id=int(meta.get("max_event_id", 0)),
        trained_at=float(meta.get("trained_at", 0.0)),
    )


def _model_class(algorithm: str) -> Any:
    if algorithm == "bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares


def train_factors(
    config: TrainingConfig,
    seed: FactorModel,
    events: list[tuple[str, str, float]],
    registered_texts: dict[str, str] | None = None,
) -> tuple[Any, Any, list[str], list[str], dict[str, str]]:
    """Fit ALS/BPR on the seed matrix plus recorded ``(user, item, weight)`` events.

    Only items somebody touched are trained; the rest stay content-only (see ``ItemSpace``).
    Returns ``(model, matrix, user_ids, item_ids, item_texts)``.
    """
    import scipy.sparse as sp

    seed_rows = seed.user_items.tocoo()
    triples: dict[tuple[str, str], float] = {}
    for u, i, w in zip(seed_rows.row, seed_rows.col, seed_rows.data, strict=True):
        key = (seed.user_ids[u], seed.item_ids[i])
        triples[key] = triples.get(key, 0.0) + float(w)
    for user, item, weight in events:
        triples[(user, item)] = triples.get((user, item), 0.0) + float(weight)
    user_ids = sorted({u for u, _ in triples})
    item_ids = sorted({i for _, i in triples})
    users = {u: n for n, u in enumerate(user_ids)}
    items = {i: n for n, i in enumerate(item_ids)}
    rows = [users[u] for u, _ in triples]
    cols = [items[i] for _, i in triples]
    matrix = sp.csr_matrix(
        (np.fromiter(triples.values(), dtype=np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    cls = _model_class(config.algorithm)
    kwargs: dict[str, Any] = {
        "factors": config.factors,
        "iterations": config.iterations,
        "regularization": config.regularization,
        "random_state": config.seed,
        "num_threads": 1,  # the replica's CPU share; training runs beside live requests
    }
    if config.algorithm == "bpr":
        kwargs["learning_rate"] = config.learning_rate
    model = cls(**kwargs)
    model.fit(matrix, show_progress=False)
    texts = {**seed.item_texts, **(registered_texts or {})}
    return model, matrix, user_ids, item_ids, {i: texts[i] for i in item_ids if i in texts}


class ModelRegistry:
    """Versions of the trained recommender in one folder (shared by all replicas), with a ``CURRENT`` pointer."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root, self.keep = Path(root), keep

    def current(self) -> str | None:
        try:
            version = (self.root / CURRENT).read_text().strip()
        except FileNotFoundError:
            return None
        return version if version and (self.root / version).is_dir() else None

    def path(self, version: str) -> Path:
        return self.root / version

    def publish(self, write: Any) -> str:
        """Call ``write(folder)`` into a private folder, then make it the current version in one rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        version = time.strftime("v%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]
        staging = self.root / f".staging-{version}"
        write(staging)
        staging.rename(self.root / version)
        pointer = self.root / f".{CURRENT}.{version}"
        pointer.write_text(version)
        os.replace(pointer, self.root / CURRENT)  # atomic: readers see the old version or the new one
        self._prune(keep=version)
        return version

    def _prune(self, keep: str) -> None:
        versions = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("v"))
        for old in versions[: -self.keep]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
