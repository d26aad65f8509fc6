"""The recommender: answers recommendations and similar items, records events, and retrains itself.

- Events (view, like, listen, share) go to the recommender's own store; every replica reads a user's events
  when it answers, so a user's new events count at once (ALS recomputes their factors from their items).
- Retraining runs in the background (after N new events or on an interval; or ``POST /v1/recommend/retrain``):
  one replica at a time holds a lease in the store, trains on the seed matrix plus every recorded event, and
  publishes a new version folder with an atomic pointer flip; every replica swaps to it within ``refresh_s``.
- Cold start: registered content carries its text; its factors are estimated from its content neighbours, and a
  user's content profile is blended with the collaborative score, so a new item can be recommended before anyone
  touches it. Unknown users get fresh and popular items. Every item says why it is there (``reason``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from deployments.common import RequestError, project_path, resolve_model_source, resolve_placement
from deployments.recommend.config import RecommendConfig
from deployments.recommend.model import FactorModel, ModelRegistry, load_model_dir, save_model_dir, train_factors
from deployments.recommend.schemas import (
    InteractionAck,
    InteractionIn,
    ItemIn,
    Reason,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    ScoredItem,
    SimilarRequest,
)
from deployments.recommend.space import ItemSpace, SpaceSettings
from deployments.recommend.store import InteractionStore
from deployments.recommend.vectors import ContentEncoder, from_bytes, to_bytes
from deployments.sql import StoreUnavailable
from deployments.telemetry import telemetry

logger = logging.getLogger("content_studio.recommend")
FOLLOW_OVERLAP_S = 60.0  # items are followed from a little before the newest one held (clocks of nodes differ)
FOLLOW_PAGE = 10_000  # ids read per query while following (bounds a replica's memory after a bulk import)


class TrainingBusy(RequestError):
    """Another replica holds the training lease."""


class Recommender:
    """Answers recommendations and similar items from the current snapshot; records events; retrains."""

    def __init__(self, config: RecommendConfig, seed: FactorModel | None = None, background: bool = False) -> None:
        self.config = config
        self.placement = resolve_placement("cpu")  # the PyPI build of implicit computes on the CPU
        if seed is None:  # a fresh install has no seed: it learns from events by its own retraining
            seed = load_model_dir(Path(resolve_model_source(config.model))) if config.model else FactorModel.empty()
        self.seed = seed
        self.registry = ModelRegistry(project_path(config.trained_dir))
        self.store = InteractionStore(config.store_url, config.database)
        self.snapshot = self._load_current() or self.seed
        self.encoder = ContentEncoder(config.content_dim)
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
        if config.content_dim != self.config.content_dim:
            self.encoder = ContentEncoder(config.content_dim)
        self.config = config  # a change of the space's settings rebuilds it on the next query (see space())

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
            "store": self.store.engine.url.render_as_string(hide_password=True),
            "store_revision": self.store.revision,
            "space": self._space[1].describe() if self._space is not None else None,
        }

    def check_health(self) -> None:
        """The replica's own health: its snapshot scores. A database that is down is not the replica's fault
        (requests needing it answer 503 until it is back); replacing the replica would not bring it back."""
        snap = self.snapshot
        if snap.item_ids:
            _ = snap.model.item_factors[:1] @ snap.model.item_factors[0]

    def _load_current(self) -> FactorModel | None:
        version = self.registry.current()
        if version is None:
            return None
        return load_model_dir(self.registry.path(version), version=version)

    def refresh(self) -> bool:
        """Swap in the published version if it is newer than ours. Its item space is opened first (at a million
        items, seconds), then snapshot and space are swapped together: no query waits for a version to load."""
        version = self.registry.current()
        if version is None or version == self.snapshot.version:
            return False
        snap = load_model_dir(self.registry.path(version), version=version)
        self._serve(snap)
        self._popular_cache = None
        logger.info("recommender now serves version %s", version)
        return True

    def warm(self) -> None:
        """Open the current version's item space now (a replica calls it before taking requests). A database
        that is down does not stop the replica from starting: the saved space is open, and new items are followed
        once it is back (requests that need it answer 503 meanwhile)."""
        try:
            self.space()
        except StoreUnavailable as exc:
            logger.warning("recommender starts without following new items yet: %s", exc)

    def _serve(self, snap: FactorModel) -> None:
        settings = self._settings()
        opened = self._open_space(snap, settings)
        with self._space_lock:
            self.snapshot = snap
            self._space = (self._space_key(snap, settings), opened)
            self._followed = (0.0, -1.0)

    def _maintain(self) -> None:
        while not self._stop.wait(self.config.refresh_s):
            try:
                self.refresh()
                trigger = self.retrain_due()
                report = self.retrain(trigger) if trigger else None
                if report is not None:
                    telemetry.count("content_studio_recommender_retrains", trigger=report.trigger)
            except TrainingBusy:
                pass
            except Exception:  # the loop must outlive a bad round; requests keep the current snapshot
                logger.exception("recommender background maintenance failed")

    # --- training -----------------------------------------------------------------------------------------
    def retrain_due(self, now: float | None = None) -> str | None:
        """Why a retrain is due now (``after_events`` / ``interval``), or None."""
        policy = self.config.training
        new_events = self.store.last_event_id() - self.snapshot.max_event_id
        if new_events <= 0:
            return None
        if policy.after_events is not None and new_events >= policy.after_events:
            return "after_events"
        trained_at = self.snapshot.trained_at or 0.0
        if policy.interval_s is not None and (now or time.time()) - trained_at >= policy.interval_s:
            return "interval"
        return None

    def retrain(self, trigger: str = "admin") -> RetrainReport | None:
        """Train on everything recorded so far, publish the version, and serve it. One trainer at a time.

        A policy trigger (not ``admin``) re-checks under the lease: another replica may have just published a
        version with these events, and then there is nothing to do (returns None)."""
        policy = self.config.training
        busy = TrainingBusy("retrain", "a retrain is already running; try again when it finishes", 409)
        if not self._training.acquire(blocking=False):
            raise busy
        if not self._lease(policy.lease_s):
            self._training.release()
            raise busy
        started, leased_at = time.perf_counter(), time.time()
        try:
            if trigger != "admin":
                self.refresh()
                if self.retrain_due() is None:
                    return None
            upto = self.store.last_event_id()
            events = self.store.training_events(upto)
            if not events and not self.seed.item_ids:
                if trigger != "admin":
                    return None
                raise TrainingBusy("retrain", "nothing to train on yet: no seed model and no recorded events", 409)
            model, matrix, users, items, texts = train_factors(policy, self.seed, events)
            meta = {"max_event_id": upto, "trained_at": time.time(), "trigger": trigger, "events": len(events)}
            registered = self._registered(0.0)  # re-vectorising and indexing everything: a training-time job

            def write(folder: Path) -> None:
                save_model_dir(
                    folder, model, matrix, users, items, algorithm=policy.algorithm, item_texts=texts, meta=meta
                )
                trained = load_model_dir(folder)
                watermark = max((created for _, created, _ in registered), default=0.0)
                space = ItemSpace.build(
                    trained, [(i, v) for i, _, v in registered], self.encoder, self._settings(), watermark
                )
                space.save(folder)

            version = self.registry.publish(write)
            self.refresh()
            seconds = time.perf_counter() - started
            logger.info("retrained %s on %d events in %.2fs (%s)", version, len(events), seconds, trigger)
            return RetrainReport(
                version=version,
                algorithm=policy.algorithm,
                users=len(users),
                items=len(items),
                events=len(events),
                seconds=round(seconds, 3),
                trigger=trigger,
                holder=self.holder,
                started_at=leased_at,
                finished_at=time.time(),
            )
        finally:
            self.store.release_lease("train", self.holder)
            self._training.release()

    def _lease(self, seconds: float) -> bool:
        return self.store.try_lease("train", self.holder, seconds)

    # --- interactions -------------------------------------------------------------------------------------
    def interaction_counts(self, item_ids: list[str]) -> dict[str, int]:
        """How many events each of these items received (engagement per experiment variant)."""
        return self.store.event_counts(item_ids)

    def add_items(self, items: list[ItemIn]) -> int:
        """Register items: each is vectorised once, here, and stored with its vector; replicas add it to their
        space (and indexes) when they next look, without touching the rest of the catalogue."""
        vectors = self.encoder.encode([f"{i.title}\n{i.text}".strip() for i in items])
        added = self.store.add_items(items, [to_bytes(v) for v in vectors])
        if added:
            self._followed = (0.0, self._followed[1])  # look for new items at the next query
        return added

    def record(self, events: list[InteractionIn]) -> list[InteractionAck]:
        known = self.snapshot.item_index.keys() | self.seed.item_index.keys()
        candidates = sorted({e.item_id for e in events if e.item_id not in known})
        unknown = sorted(set(candidates) - set(self.store.known_items(candidates))) if candidates else []
        if unknown:
            raise RequestError("item_id", f"unknown item(s): {', '.join(unknown[:5])}", status_code=404)
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
    def _settings(self) -> SpaceSettings:
        c = self.config
        return SpaceSettings(c.content_neighbours, c.retrieval != "exact", c.ann_expansion)

    def _registered(self, since: float) -> list[tuple[str, float, np.ndarray]]:
        """Registered items from ``since`` on, with their vectors (rows stored before vectors existed, or with
        another dimension, are vectorised from their text)."""
        return self._with_vectors(self.store.items_since(since))

    def _unheld(self, space: ItemSpace) -> list[tuple[str, float, np.ndarray]]:
        """Items registered since the space's newest one (less ``FOLLOW_OVERLAP_S``) that it does not hold, with
        their vectors. Ids are paged and checked first, so the overlap costs one id per item and no vectors
        (after a bulk import, a minute holds a great many items the version already has)."""
        since, after, unheld = space.watermark - FOLLOW_OVERLAP_S, None, []
        while True:
            page = self.store.item_times_since(since, after, FOLLOW_PAGE)
            unheld += [item_id for item_id, _ in page if item_id not in space.index]
            if len(page) < FOLLOW_PAGE:
                break
            after = (page[-1][1], page[-1][0])
        return self._with_vectors(self.store.items_by_id(unheld)) if unheld else []

    def _with_vectors(self, rows: list[tuple[str, float, bytes | None, str]]) -> list[tuple[str, float, np.ndarray]]:
        vectors = [from_bytes(blob, self.encoder.dim) for _, _, blob, _ in rows]
        missing = [n for n, v in enumerate(vectors) if v is None]
        if missing:
            encoded = self.encoder.encode([rows[n][3] for n in missing])
            for n, vector in zip(missing, encoded, strict=True):
                vectors[n] = vector
        return [(i, created, v) for (i, created, _, _), v in zip(rows, vectors, strict=True)]

    def space(self) -> ItemSpace:
        """Every rankable item: the version's saved space (or one built from the seed), plus the items
        registered since, added one by one as they are seen (at most a second late)."""
        return self.serving()[1]

    def serving(self) -> tuple[FactorModel, ItemSpace]:
        """The snapshot and its space, read together (a refresh swaps both at once)."""
        settings = self._settings()
        with self._space_lock:
            snap = self.snapshot
            key = self._space_key(snap, settings)
            cached = self._space
            if cached is None or cached[0] != key:
                cached = (key, self._open_space(snap, settings))
                self._space = cached
                self._followed = (0.0, -1.0)
            space = cached[1]
            now = time.monotonic()
            if now - self._followed[0] > 1.0:
                newest = self.store.newest_item_time()
                if newest != self._followed[1]:
                    fresh = self._unheld(space)
                    if fresh:
                        space.add(
                            [i for i, _, _ in fresh],
                            np.asarray([v for _, _, v in fresh], np.float32),
                            created_at=max(c for _, c, _ in fresh),
                        )
                self._followed = (now, newest)
        return snap, space

    def _space_key(self, snap: FactorModel, settings: SpaceSettings) -> tuple[Any, ...]:
        """What a cached space was opened for: another version, dimension or settings opens a new one."""
        return (snap.version, self.config.content_dim, settings)

    def _open_space(self, snap: FactorModel, settings: SpaceSettings) -> ItemSpace:
        """The space saved with this version; a seed or a fresh install builds one from what is registered."""
        if snap.version not in ("seed", "empty"):
            loaded = ItemSpace.load(self.registry.path(snap.version), settings)
            if loaded is not None and loaded.content.shape[1] == self.encoder.dim:
                return loaded
        registered = self._registered(0.0)
        watermark = max((c for _, c, _ in registered), default=0.0)
        return ItemSpace.build(snap, [(i, v) for i, _, v in registered], self.encoder, settings, watermark)

    def _approximate(self, space: ItemSpace) -> bool:
        retrieval = self.config.retrieval
        return bool(space.indexes) and (
            retrieval == "approximate" or (retrieval == "auto" and space.n >= self.config.exact_below)
        )

    def _k(self, k: int | None) -> int:
        k = k or self.config.default_k
        if k > self.config.max_k:
            raise RequestError("k", f"must be at most {self.config.max_k}")
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
            raise RequestError("item_id", f"unknown item {request.item_id!r}", status_code=404)
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
