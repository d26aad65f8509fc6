"""The recommender: answers recommendations and similar items, records events, and retrains itself.

- Events (view, like, listen, share) go to the recommender's own store; every replica reads a user's events
  when it answers, so a user's new events count at once (ALS recomputes their factors from their items).
- Retraining runs in the background (after N new events or on an interval; or ``POST /v1/recommend/retrain``):
  one replica at a time holds a lease in the store, trains on the seed matrix plus every recorded event, and
  publishes a new version folder with an atomic pointer flip; every replica swaps to it within ``refresh_s``
  (upkeep.py keeps the model current; this module answers).
- Cold start: registered content carries its text; its factors are estimated from its content neighbours, and a
  user's content profile is blended with the collaborative score, so a new item can be recommended before anyone
  touches it. Unknown users get fresh and popular items. Every item says why it is there (``reason``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployments.common import project_path, resolve_model_source, resolve_placement
from deployments.errors import InvalidRequest, NotFound
from deployments.recommend.config import RecommendConfig
from deployments.recommend.model import FactorModel, ModelRegistry, load_model_dir
from deployments.recommend.schemas import (
    InteractionAck,
    InteractionIn,
    ItemIn,
    Reason,
    Recommendations,
    RecommendRequest,
    ScoredItem,
    SimilarRequest,
)
from deployments.recommend.space import ItemSpace
from deployments.recommend.store import InteractionStore
from deployments.recommend.upkeep import ModelUpkeep
from deployments.recommend.vectors import ContentEncoder, Encoder, ServiceEncoder, to_bytes


@dataclass(frozen=True)
class EmbedCall:
    """How a recommender reaches the embedding service: ``vectors(texts, dimensions)`` and the model's name (it
    tags the stored vectors)."""

    vectors: Callable[[list[str], int], Any]
    model: str


class Recommender(ModelUpkeep):
    """Answers recommendations and similar items from the current snapshot; records events; retrains."""

    def __init__(
        self,
        config: RecommendConfig,
        seed: FactorModel | None = None,
        background: bool = False,
        embed: EmbedCall | None = None,
    ) -> None:
        self.config = config
        self.placement = resolve_placement("cpu")  # the PyPI build of implicit computes on the CPU
        if seed is None:  # a fresh install has no seed: it learns from events by its own retraining
            seed = load_model_dir(Path(resolve_model_source(config.model))) if config.model else FactorModel.empty()
        self.seed = seed
        self.registry = ModelRegistry(project_path(config.trained_dir), config.keep_versions)
        self.store = InteractionStore(config.store_url, config.database)
        self.snapshot = self._load_current() or self.seed
        self.embed = embed  # the embedding service, when content vectors come from it
        self.encoder = self._encoder(config)
        self._space: tuple[tuple[Any, ...], ItemSpace] | None = None
        self._space_lock = threading.Lock()
        self._followed: tuple[float, float] = (0.0, -1.0)  # (when we last looked, newest item time seen)
        self._popular_cache: tuple[float, list[tuple[str, float]]] | None = None
        self._training = threading.Lock()
        self.holder = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._maintain, name="recommend-maintain", daemon=True)
            self._thread.start()

    # --- lifecycle ----------------------------------------------------------------------------------------
    def apply_config(self, config: RecommendConfig) -> None:
        if config.store_url != self.config.store_url or config.database != self.config.database:
            old, self.store = self.store, InteractionStore(config.store_url, config.database)
            old.dispose()
        if (config.content_vectors, config.content_dim) != (self.config.content_vectors, self.config.content_dim):
            self.encoder = self._encoder(config)
        self.registry.keep = config.keep_versions
        self.config = config  # a change of the space's settings rebuilds it on the next query (see space())

    def _encoder(self, config: RecommendConfig) -> Encoder:
        if config.content_vectors == "hashed":
            return ContentEncoder(config.content_dim)
        if self.embed is None:
            raise ValueError("content_vectors `embed` needs the embed service deployed in the application")
        return ServiceEncoder(self.embed.vectors, config.content_dim, self.embed.model)

    def close(self) -> None:
        self._stop.set()
        self.store.dispose()

    def describe(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "dtype": str(snap.model.item_factors.dtype),
            "algorithm": snap.algorithm,
            "model_version": snap.version,
            "trained_at": snap.trained_at or None,
            "factors": int(snap.model.item_factors.shape[1]),
            "users": len(snap.user_ids),
            "items": len(snap.item_ids),
            "events_since_training": max(0, self.store.last_event_id() - snap.max_event_id),
            "store": self.store.database.url.render_as_string(hide_password=True),
            "store_revision": self.store.revision,
            "space": self._space[1].describe() if self._space is not None else None,
        }

    def check_health(self) -> None:
        """The replica's own health: its snapshot scores. A database that is down is not the replica's fault
        (requests needing it answer 503 until it is back); replacing the replica would not bring it back."""
        snap = self.snapshot
        if snap.item_ids:
            _ = snap.model.item_factors[:1] @ snap.model.item_factors[0]

    # --- interactions -------------------------------------------------------------------------------------
    def interaction_counts(self, item_ids: list[str]) -> dict[str, int]:
        """How many events each of these items received (engagement per experiment variant)."""
        return self.store.event_counts(item_ids)

    def add_items(self, items: list[ItemIn]) -> int:
        """Register items: each is vectorised once, here, and stored with its vector; replicas add it to their
        space (and indexes) when they next look, without touching the rest of the catalogue."""
        vectors = self.encoder.encode([f"{i.title}\n{i.text}".strip() for i in items])
        added = self.store.add_items(items, [to_bytes(v, self.encoder.key) for v in vectors])
        if added:
            self._followed = (0.0, self._followed[1])  # look for new items at the next query
        return added

    def record(self, events: list[InteractionIn]) -> list[InteractionAck]:
        known = self.snapshot.item_index.keys() | self.seed.item_index.keys()
        candidates = sorted({e.item_id for e in events if e.item_id not in known})
        unknown = sorted(set(candidates) - set(self.store.known_items(candidates))) if candidates else []
        if unknown:
            raise NotFound.for_field("item_id", f"unknown item(s): {', '.join(unknown[:5])}")
        now = time.time()
        rows = [
            {
                "user_id": e.user_id,
                "item_id": e.item_id,
                "event": e.event,
                "weight": e.weight if e.weight is not None else self.config.event_weights[e.event],
                "created_at": now,
            }
            for e in events
        ]
        self.store.add(rows)
        self._popular_cache = None
        return [
            InteractionAck(accepted=1, user_id=r["user_id"], item_id=r["item_id"], weight=r["weight"]) for r in rows
        ]

    # --- queries ------------------------------------------------------------------------------------------
    def _approximate(self, space: ItemSpace) -> bool:
        retrieval = self.config.retrieval
        return bool(space.indexes) and (
            retrieval == "approximate" or (retrieval == "auto" and space.n >= self.config.exact_below)
        )

    def _k(self, k: int | None) -> int:
        k = k or self.config.default_k
        if k > self.config.max_k:
            raise InvalidRequest.for_field("k", f"must be at most {self.config.max_k}")
        return k

    def _history(self, snap: FactorModel, user_id: str) -> tuple[Any, bool, dict[str, float]]:
        """The user's row over trained items (training data plus recorded events) and every item they touched."""
        import scipy.sparse as sp

        n_items = len(snap.item_ids)
        idx = snap.user_index.get(user_id)
        row = snap.user_items[idx] if idx is not None else sp.csr_matrix((1, n_items), dtype=np.float32)
        touched = {snap.item_ids[i]: float(w) for i, w in zip(row.indices, row.data, strict=True)}
        events = self.store.user_events(user_id)
        for item, weight in events:
            touched[item] = touched.get(item, 0.0) + weight
        recorded = [(snap.item_index[i], w) for i, w in events if i in snap.item_index]
        if recorded:
            cols, vals = zip(*recorded, strict=True)
            row = row + sp.csr_matrix((vals, ([0] * len(cols), cols)), shape=(1, n_items), dtype=np.float32)
        return sp.csr_matrix(row, dtype=np.float32), bool(recorded), touched

    def popular(self) -> list[tuple[str, float]]:
        """All items by total engagement (training data plus recorded events), best first, scores in [0, 1]."""
        cache = self._popular_cache
        if cache is not None and time.monotonic() - cache[0] < self.config.popular_cache_s:
            return cache[1]
        # The seed matrix plus every recorded event (a retrained version holds exactly these, so use the seed).
        seed = self.seed
        totals = dict(zip(seed.item_ids, np.asarray(seed.user_items.sum(axis=0)).ravel().tolist(), strict=True))
        for item, weight in self.store.item_totals().items():
            totals[item] = totals.get(item, 0.0) + weight
        norm = max(totals.values(), default=0.0) or 1.0
        ranked = sorted(((item, float(total / norm)) for item, total in totals.items()), key=lambda t: -t[1])
        self._popular_cache = (time.monotonic(), ranked)
        return ranked

    def scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[str], ItemSpace] | None:
        """Blended-to-be (collaborative, content) scores of the candidate rows for a user (every row when
        exact; ANN candidates otherwise), or None for a user without history."""
        snap, space = self.serving()
        row, has_new_events, touched = self._history(snap, user_id)
        vector = snap.user_vector(user_id, row, has_new_events)
        profile = space.profile(touched)
        if vector is None and profile is None:
            return None
        if self._approximate(space):
            counts = {"factors": self.config.ann_candidates, "content": self.config.profile_candidates}
            rows = space.candidates({"factors": vector, "content": profile}, counts)
        else:
            rows = np.arange(space.n)
        factors, content = space.factors[rows], space.content[rows]
        collaborative = factors @ vector if vector is not None else np.zeros(len(rows), np.float32)
        from_content = content @ profile if profile is not None else np.zeros_like(collaborative)
        return rows, _scaled(collaborative), _scaled(from_content), set(touched), space

    def recommend(self, request: RecommendRequest) -> Recommendations:
        k = self._k(request.k)
        snap = self.snapshot
        items: list[ScoredItem] = []
        excluded: set[str] = set()
        scored = self.scores(request.user_id)
        if scored is not None:
            rows, collaborative, content, seen, space = scored
            excluded = seen if request.exclude_seen else set()
            weight = self.config.content_weight
            blended = (1 - weight) * collaborative + weight * content
            picked = _pick(
                blended, rows, space, excluded, k, self.config.new_item_slots, self.config.new_item_min_share
            )
            for n in picked:
                row = int(rows[n])
                from_content = not space.trained[row] or weight * content[n] > (1 - weight) * collaborative[n]
                reason: Reason = "content" if from_content else "als"
                items.append(ScoredItem(item_id=space.item_ids[row], score=float(blended[n]), reason=reason))
        chosen = {item.item_id for item in items}

        def fill(candidates: list[tuple[str, float]], reason: Reason, upto: int) -> None:
            for item_id, score in candidates:
                if len(items) >= upto:
                    return
                if item_id not in chosen and item_id not in excluded:
                    items.append(ScoredItem(item_id=item_id, score=score, reason=reason))
                    chosen.add(item_id)

        if not items:  # a cold user: keep a few places for what is new, so new content gets seen
            fill(
                [(i, 0.0) for i in self.store.newest_items(self.config.fresh_slots + k)],
                "fresh",
                self.config.fresh_slots,
            )
        if len(items) < k:  # cold users, and topping up a short list (popular() scans every event when stale)
            fill(self.popular(), "popular", k)
        return Recommendations(items=self._titled(items), model_version=snap.version)

    def _titled(self, items: list[ScoredItem]) -> list[ScoredItem]:
        """Answers name their items (one lookup for the k items), so a page can show titles, not ids."""
        titles = self.store.item_titles([i.item_id for i in items]) if items else {}
        return [i.model_copy(update={"title": titles.get(i.item_id) or None}) for i in items]

    def similar(self, request: SimilarRequest) -> Recommendations:
        """Items like this one: factor cosine (estimated factors for new items) blended with text similarity."""
        k = self._k(request.k)
        snap, space = self.serving()
        n = space.index.get(request.item_id)
        if n is None:
            raise NotFound.for_field("item_id", f"unknown item {request.item_id!r}")
        unit, vector = space.unit[n], space.content[n]
        if self._approximate(space):
            counts = dict.fromkeys(("unit", "content"), self.config.ann_candidates)
            rows = space.candidates({"unit": unit, "content": vector}, counts)
        else:
            rows = np.arange(space.n)
        collaborative = space.unit[rows] @ unit
        content = space.content[rows] @ vector
        weight = self.config.content_weight
        blended = (1 - weight) * collaborative + weight * content
        items: list[ScoredItem] = []
        for m in np.argsort(-blended):
            if len(items) >= k or blended[m] <= 0:
                break
            row = int(rows[m])
            if row == n:
                continue
            from_content = weight * content[m] > (1 - weight) * collaborative[m]
            reason: Reason = "content" if from_content else "similar"
            items.append(ScoredItem(item_id=space.item_ids[row], score=float(blended[m]), reason=reason))
        return Recommendations(items=self._titled(items), model_version=snap.version)


def _pick(
    blended: np.ndarray,
    rows: np.ndarray,
    space: ItemSpace,
    excluded: set[str],
    k: int,
    new_slots: int,
    min_share: float,
) -> list[int]:
    """Positions in ``rows`` of the top ``k`` items by blended score, with up to ``new_slots`` places for
    untouched (content-only) items that score at least ``min_share`` of the best: averaged neighbour factors
    rarely outrank the best known items, so without reserved places new content would never be seen, and never
    get the events it needs. Walks the ranking only as far as it must."""
    order: list[int] = []
    new: list[int] = []
    floor = None
    trained = space.trained
    for n in np.argsort(-blended):
        n = int(n)
        if blended[n] <= 0:
            break
        if floor is not None and len(order) >= k and (len(new) >= new_slots or blended[n] < floor):
            break
        if space.item_ids[rows[n]] in excluded:
            continue
        if floor is None:
            floor = min_share * float(blended[n])
        order.append(n)
        if not trained[rows[n]] and blended[n] >= floor and len(new) < new_slots:
            new.append(n)
    rest = [n for n in order if n not in new][: k - len(new)]
    return sorted(new + rest, key=lambda n: -blended[n])


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the largest one, so collaborative and content scores blend on one scale."""
    top = float(scores.max(initial=0.0))
    return scores / top if top > 0 else scores
