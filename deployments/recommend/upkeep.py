"""Keeping the recommender's model current: the version it serves, its item space, and retraining.

The first half of ``Recommender`` (service.py answers queries and records events): a replica serves an immutable
snapshot (a trained version) with its item space, swaps both at once when a newer version is published, follows
items registered since into the space, and retrains in the background (one replica at a time, under a lease in
the store), publishing versions with an atomic pointer flip.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from deployments.errors import Conflict, Unavailable
from deployments.recommend.config import RecommendConfig
from deployments.recommend.model import FactorModel, ModelRegistry, load_model_dir, save_model_dir, train_factors
from deployments.recommend.schemas import RetrainReport
from deployments.recommend.space import ItemSpace, SpaceSettings
from deployments.recommend.store import InteractionStore
from deployments.recommend.vectors import Encoder, from_bytes
from deployments.telemetry import telemetry

logger = logging.getLogger("content_studio.recommend")
FOLLOW_OVERLAP_S = 60.0  # items are followed from a little before the newest one held (clocks of nodes differ)
FOLLOW_PAGE = 10_000  # ids read per query while following (bounds a replica's memory after a bulk import)


class ModelUpkeep:
    """The snapshot a ``Recommender`` serves, kept current. The recommender holds what this reads: its
    ``config``, ``seed``, ``registry``, ``store``, ``encoder``, ``snapshot``, and the locks and caches below."""

    config: RecommendConfig
    seed: FactorModel
    registry: ModelRegistry
    store: InteractionStore
    encoder: Encoder
    snapshot: FactorModel
    holder: str
    _space: tuple[tuple[Any, ...], ItemSpace] | None
    _space_lock: threading.Lock
    _followed: tuple[float, float]
    _popular_cache: tuple[float, list[tuple[str, float]]] | None
    _training: threading.Lock
    _stop: threading.Event

    # --- versions ---------------------------------------------------------------------------------------------
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
        except Unavailable as exc:
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
            except Conflict:  # another replica holds the training lease
                pass
            except Exception:  # the loop must outlive a bad round; requests keep the current snapshot
                logger.exception("recommender background maintenance failed")

    # --- training ---------------------------------------------------------------------------------------------
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
        busy = Conflict.for_field("retrain", "a retrain is already running; try again when it finishes")
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
                raise Conflict.for_field("retrain", "nothing to train on yet: no seed model and no recorded events")
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

    # --- the item space ---------------------------------------------------------------------------------------
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
        vectors = [from_bytes(blob, self.encoder) for _, _, blob, _ in rows]
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
        return (snap.version, self.encoder.key, settings)

    def _open_space(self, snap: FactorModel, settings: SpaceSettings) -> ItemSpace:
        """The space saved with this version; a seed or a fresh install builds one from what is registered."""
        if snap.version not in ("seed", "empty"):
            loaded = ItemSpace.load(self.registry.path(snap.version), settings)
            if loaded is not None and loaded.encoder_key == self.encoder.key:
                return loaded
        registered = self._registered(0.0)
        watermark = max((c for _, c, _ in registered), default=0.0)
        return ItemSpace.build(snap, [(i, v) for i, _, v in registered], self.encoder, settings, watermark)
