"""Recommendation service: collaborative filtering with ``implicit`` (ALS or BPR) that keeps learning.

- Events (view, like, listen, share) go to the recommender's own store (SQLAlchemy; SQLite by default). Every
  replica reads a user's events when it answers, so a user's new events count at once (ALS recomputes their
  factors from their items).
- Retraining runs in the background (after N new events or on an interval; or ``POST /v1/recommend/retrain``):
  one replica at a time holds a lease in the store, trains on the seed matrix plus every recorded event, and
  publishes a new version folder (``.npz`` only) with an atomic pointer flip; every replica notices the new
  ``CURRENT`` within ``refresh_s`` and swaps its snapshot by reference, between requests.
- Cold start: content the pipeline registers carries its text; its factors are estimated from its TF-IDF
  neighbours among trained items, and a user's content profile (what they touched) is blended with the
  collaborative score, so a new item can be recommended before anyone touches it. Unknown users get fresh and
  popular items. Every item says why it is there (``reason``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from ray import serve

from deployments.common import (
    RequestError,
    ServiceConfig,
    StrictModel,
    create_sql_engine,
    create_tables,
    project_path,
    resolve_model_source,
    resolve_placement,
)
from deployments.recommend_model import (
    FactorModel,
    ItemSpace,
    ModelRegistry,
    TrainingConfig,
    load_model_dir,
    save_model_dir,
    train_factors,
)
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

EventType = Literal["view", "like", "listen", "share"]
Reason = Literal["als", "content", "popular", "fresh", "similar"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
MAX_K = 100
MAX_ITEM_TEXT = 20_000
logger = logging.getLogger("content_studio.recommend")

__all__ = ["save_model_dir"]  # re-exported: the tiny-model builder writes the seed folder with it


class RecommendConfig(ServiceConfig):
    """Configuration of the recommendation service (its deployment's ``user_config``)."""

    device: Literal["cpu"] = Field("cpu", description="implicit's PyPI build computes on the CPU.")
    dtype: Literal["auto", "float32"] = Field("auto", description="Factors are float32.")
    store_url: str = Field(
        "sqlite:///data/recommend.db",
        description="SQLAlchemy URL of the interaction store; a relative SQLite path resolves against the "
        "project root ($CONTENT_STUDIO_ROOT).",
    )
    trained_dir: str = Field(
        "data/recommend-models",
        description="Folder of retrained versions (shared by all replicas: a volume on a cluster); relative "
        "paths resolve against the project root. `model` is the seed used until a first retrain.",
    )
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Retraining policy.")
    refresh_s: float = Field(
        2.0, gt=0, le=3600, description="How often a replica looks for a new version and for retraining to do."
    )
    content_weight: float = Field(
        0.3, ge=0, le=1, description="Share of content similarity in the blended score (the rest: ALS/BPR)."
    )
    content_neighbours: int = Field(
        10, ge=1, le=100, description="Trained items whose factors a new item's factors are estimated from."
    )
    new_item_slots: int = Field(
        2, ge=0, le=MAX_K, description="Places in a known user's list kept for untouched items that match them."
    )
    new_item_min_share: float = Field(
        0.5, ge=0, le=1, description="How close to the best item's score an untouched item must be for a place."
    )
    event_weights: dict[EventType, float] = Field(
        default_factory=lambda: {"view": 1.0, "listen": 2.0, "like": 4.0, "share": 6.0},
        description="Confidence each event type adds to a user-item pair.",
    )
    default_k: int = Field(10, ge=1, le=MAX_K, description="Items returned when a request omits `k`.")
    fresh_slots: int = Field(
        2, ge=0, le=MAX_K, description="Places in a cold user's list kept for the newest registered items."
    )
    popular_cache_s: float = Field(
        30.0, ge=0, le=3600, description="How long a replica reuses its popularity ranking (own events reset it)."
    )
    max_k: int = Field(MAX_K, ge=1, le=MAX_K, description="Most items one request may ask for.")


# --- schemas ----------------------------------------------------------------------------------------------
class InteractionIn(StrictModel):
    user_id: str = Field(pattern=ID_PATTERN, description="Any user id; new users are welcome.")
    item_id: str = Field(pattern=ID_PATTERN, description="An item the recommender knows.")
    event: EventType
    weight: float | None = Field(None, gt=0.0, le=100.0, description="Overrides the event type's weight.")


class RecommendRequest(StrictModel):
    user_id: str = Field(pattern=ID_PATTERN)
    k: int | None = Field(None, ge=1, le=MAX_K)
    exclude_seen: bool = True


class SimilarRequest(StrictModel):
    item_id: str = Field(pattern=ID_PATTERN)
    k: int | None = Field(None, ge=1, le=MAX_K)


class ScoredItem(StrictModel):
    item_id: str
    score: float
    reason: Reason = Field(
        description="als: collaborative factors; content: text similarity (new items, content profile); "
        "popular / fresh: for users without history; similar: item-to-item."
    )


class Recommendations(StrictModel):
    items: list[ScoredItem]
    model_version: str | None = Field(None, description="The trained version that answered (`seed` before any).")


class ItemIn(StrictModel):
    """An item to make known to the recommender, e.g. content the pipeline just stored."""

    item_id: str = Field(pattern=ID_PATTERN)
    title: str = Field("", max_length=500)
    text: str = Field("", max_length=MAX_ITEM_TEXT, description="What the item says: used for content similarity.")


class InteractionAck(StrictModel):
    accepted: int
    user_id: str
    item_id: str
    weight: float


class RetrainReport(StrictModel):
    version: str
    algorithm: str
    users: int
    items: int
    events: int = Field(description="Recorded events the version was trained on (plus the seed matrix).")
    seconds: float
    trigger: str


class TrainingBusy(RequestError):
    """Another replica holds the training lease."""


class InteractionStore:
    """Interactions, items and the training lease the recommender owns, in any SQLAlchemy database."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.engine = create_sql_engine(url)
        meta = sa.MetaData()
        self.interactions = sa.Table(
            "interactions",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("user_id", sa.String(128), nullable=False, index=True),
            sa.Column("item_id", sa.String(128), nullable=False, index=True),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("weight", sa.Float, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        )
        self.items = sa.Table(
            "items",
            meta,
            sa.Column("item_id", sa.String(128), primary_key=True),
            sa.Column("title", sa.String(500), nullable=False, default=""),
            sa.Column("text", sa.Text, nullable=False, default=""),
            sa.Column("created_at", sa.Float, nullable=False, index=True),
        )
        self.leases = sa.Table(
            "leases",
            meta,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("holder", sa.String(64), nullable=False),
            sa.Column("until", sa.Float, nullable=False),
        )
        create_tables(meta, self.engine)
        self._migrate()

    def _migrate(self) -> None:
        """Stores made before items had texts get the column (SQLite and PostgreSQL both take this)."""
        import sqlalchemy as sa

        columns = {c["name"] for c in sa.inspect(self.engine).get_columns("items")}
        if "text" not in columns:
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE items ADD COLUMN text TEXT NOT NULL DEFAULT ''"))

    def add_items(self, items: list[ItemIn]) -> int:
        """Register items; ones already known are left as they are. Returns how many were new."""
        import sqlalchemy as sa

        now = time.time()
        with self.engine.begin() as conn:
            known = set(self.known_items([i.item_id for i in items], conn))
            rows = [
                {"item_id": i.item_id, "title": i.title, "text": i.text, "created_at": now}
                for i in items
                if i.item_id not in known
            ]
            if rows:
                conn.execute(sa.insert(self.items), rows)
        return len(rows)

    def known_items(self, item_ids: list[str], conn: Any = None) -> list[str]:
        import sqlalchemy as sa

        query = sa.select(self.items.c.item_id).where(self.items.c.item_id.in_(item_ids))
        if conn is not None:
            return list(conn.scalars(query))
        with self.engine.connect() as own:
            return list(own.scalars(query))

    def newest_items(self, limit: int) -> list[str]:
        import sqlalchemy as sa

        query = sa.select(self.items.c.item_id).order_by(self.items.c.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def item_texts(self) -> dict[str, str]:
        """Every registered item with its title and text, for content similarity."""
        import sqlalchemy as sa

        t = self.items
        with self.engine.connect() as conn:
            return {
                i: f"{title}\n{text}".strip()
                for i, title, text in conn.execute(sa.select(t.c.item_id, t.c.title, t.c.text))
            }

    def items_version(self) -> tuple[int, float]:
        """Changes whenever an item is registered: (count, newest created_at)."""
        import sqlalchemy as sa

        t = self.items
        with self.engine.connect() as conn:
            count, newest = conn.execute(sa.select(sa.func.count(), sa.func.max(t.c.created_at))).one()
        return int(count), float(newest or 0.0)

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.interactions.insert(), rows)

    def user_events(self, user_id: str) -> list[tuple[str, float]]:
        import sqlalchemy as sa

        t = self.interactions
        query = sa.select(t.c.item_id, sa.func.sum(t.c.weight)).where(t.c.user_id == user_id).group_by(t.c.item_id)
        with self.engine.connect() as conn:
            return [(item, float(weight)) for item, weight in conn.execute(query)]

    def item_totals(self) -> dict[str, float]:
        import sqlalchemy as sa

        t = self.interactions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.item_id, sa.func.sum(t.c.weight)).group_by(t.c.item_id))
            return {item: float(weight) for item, weight in rows}

    def event_counts(self, item_ids: list[str]) -> dict[str, int]:
        """How many events each of these items received."""
        import sqlalchemy as sa

        t = self.interactions
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(item_ids), 500):  # keep IN lists small
                chunk = item_ids[start : start + 500]
                query = sa.select(t.c.item_id, sa.func.count()).where(t.c.item_id.in_(chunk)).group_by(t.c.item_id)
                counts.update({item: int(n) for item, n in conn.execute(query)})
        return counts

    def last_event_id(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(self.interactions.c.id))).scalar() or 0)

    def training_events(self, upto: int) -> list[tuple[str, str, float]]:
        """Every (user, item, summed weight) recorded up to event id ``upto``."""
        import sqlalchemy as sa

        t = self.interactions
        query = (
            sa.select(t.c.user_id, t.c.item_id, sa.func.sum(t.c.weight))
            .where(t.c.id <= upto)
            .group_by(t.c.user_id, t.c.item_id)
        )
        with self.engine.connect() as conn:
            return [(u, i, float(w)) for u, i, w in conn.execute(query)]

    def try_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the named lease if it is free or expired: one atomic UPDATE, so only one replica wins."""
        import sqlalchemy as sa

        now = time.time()
        t = self.leases
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.c.name).where(t.c.name == name)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(t).values(name=name, holder=holder, until=now + seconds))
                    return True
                except sa.exc.IntegrityError:  # another replica inserted it first
                    pass
            taken = conn.execute(
                sa.update(t)
                .where(t.c.name == name, sa.or_(t.c.until < now, t.c.holder == holder))
                .values(holder=holder, until=now + seconds)
            )
            return taken.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.leases)
                .where(self.leases.c.name == name, self.leases.c.holder == holder)
                .values(until=0.0)
            )


# --- engine -----------------------------------------------------------------------------------------------
class Recommender:
    """Answers recommendations and similar items from the current snapshot; records events; retrains."""

    def __init__(self, config: RecommendConfig, seed: FactorModel | None = None, background: bool = False) -> None:
        self.config = config
        self.placement = resolve_placement("cpu")  # the PyPI build of implicit computes on the CPU
        self.seed = seed or load_model_dir(Path(resolve_model_source(config.model)))
        self.registry = ModelRegistry(project_path(config.trained_dir))
        self.store = InteractionStore(config.store_url)
        self.snapshot = self._load_current() or self.seed
        self._space: tuple[tuple[Any, ...], ItemSpace] | None = None
        self._items_seen: tuple[float, tuple[int, float]] | None = None
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
        if config.store_url != self.config.store_url:
            self.store = InteractionStore(config.store_url)
        self.config = config
        self._space = None  # content weighting or neighbours may have changed

    def close(self) -> None:
        self._stop.set()

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
        }

    def check_health(self) -> None:
        self.store.user_events("__health__")
        space = self.space()
        if space.item_ids:
            _ = space.factors[:1] @ space.factors[0]

    def _load_current(self) -> FactorModel | None:
        version = self.registry.current()
        if version is None:
            return None
        return load_model_dir(self.registry.path(version), version=version)

    def refresh(self) -> bool:
        """Swap in the published version if it is newer than ours (between requests: one reference swap)."""
        version = self.registry.current()
        if version is None or version == self.snapshot.version:
            return False
        self.snapshot = load_model_dir(self.registry.path(version), version=version)
        self._popular_cache = None
        logger.info("recommender now serves version %s", version)
        return True

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
        started = time.perf_counter()
        try:
            if trigger != "admin":
                self.refresh()
                if self.retrain_due() is None:
                    return None
            upto = self.store.last_event_id()
            events = self.store.training_events(upto)
            model, matrix, users, items, texts = train_factors(
                policy, self.seed, events, registered_texts=self.store.item_texts()
            )
            meta = {"max_event_id": upto, "trained_at": time.time(), "trigger": trigger, "events": len(events)}

            def write(folder: Path) -> None:
                save_model_dir(
                    folder, model, matrix, users, items, algorithm=policy.algorithm, item_texts=texts, meta=meta
                )

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
            )
        finally:
            self.store.release_lease("train", self.holder)
            self._training.release()

    def _lease(self, seconds: float) -> bool:
        return self.store.try_lease("train", self.holder, seconds)

    # --- interactions -------------------------------------------------------------------------------------
    def add_items(self, items: list[ItemIn]) -> int:
        added = self.store.add_items(items)
        if added:
            self._items_seen = None
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
    def space(self) -> ItemSpace:
        """Every rankable item for the current snapshot and registered items (rebuilt when either changes)."""
        now = time.monotonic()
        if self._items_seen is None or now - self._items_seen[0] > 1.0:
            self._items_seen = (now, self.store.items_version())
        key = (self.snapshot.version, self._items_seen[1], self.config.content_neighbours)
        cached = self._space
        if cached is not None and cached[0] == key:
            return cached[1]
        space = ItemSpace.build(self.snapshot, self.store.item_texts(), self.config.content_neighbours)
        self._space = (key, space)
        return space

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

    def scores(self, user_id: str) -> tuple[np.ndarray, np.ndarray, set[str], ItemSpace] | None:
        """Blended (collaborative, content) scores of every item for a user, or None for a user without history."""
        snap, space = self.snapshot, self.space()
        row, has_new_events, touched = self._history(snap, user_id)
        vector = snap.user_vector(user_id, row, has_new_events)
        profile = space.profile(touched)
        if vector is None and profile is None:
            return None
        collaborative = space.factors @ vector if vector is not None else np.zeros(len(space.item_ids), np.float32)
        content = np.asarray(space.content @ profile).ravel() if profile is not None else np.zeros_like(collaborative)
        return _scaled(collaborative), _scaled(content), set(touched), space

    def recommend(self, request: RecommendRequest) -> Recommendations:
        k = self._k(request.k)
        snap = self.snapshot
        items: list[ScoredItem] = []
        excluded: set[str] = set()
        scored = self.scores(request.user_id)
        if scored is not None:
            collaborative, content, seen, space = scored
            excluded = seen if request.exclude_seen else set()
            weight = self.config.content_weight
            blended = (1 - weight) * collaborative + weight * content
            for n in _pick(blended, space, excluded, k, self.config.new_item_slots, self.config.new_item_min_share):
                from_content = not space.trained[n] or weight * content[n] > (1 - weight) * collaborative[n]
                reason: Reason = "content" if from_content else "als"
                items.append(ScoredItem(item_id=space.item_ids[n], score=float(blended[n]), reason=reason))
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
        fill(self.popular(), "popular", k)  # cold users, and topping up a short list
        return Recommendations(items=items, model_version=snap.version)

    def similar(self, request: SimilarRequest) -> Recommendations:
        """Items like this one: factor cosine (estimated factors for new items) blended with text similarity."""
        k = self._k(request.k)
        space = self.space()
        n = space.index.get(request.item_id)
        if n is None:
            raise RequestError("item_id", f"unknown item {request.item_id!r}", status_code=404)
        norms = np.linalg.norm(space.factors, axis=1)
        norms[norms == 0] = 1.0
        unit = space.factors / norms[:, None]
        collaborative = unit @ unit[n]
        content = np.asarray(space.content @ space.content[n].T.toarray()).ravel()
        weight = self.config.content_weight
        blended = (1 - weight) * collaborative + weight * content
        items: list[ScoredItem] = []
        for m in np.argsort(-blended):
            if len(items) >= k or blended[m] <= 0:
                break
            if m == n:
                continue
            from_content = weight * content[m] > (1 - weight) * collaborative[m]
            reason: Reason = "content" if from_content else "similar"
            items.append(ScoredItem(item_id=space.item_ids[m], score=float(blended[m]), reason=reason))
        return Recommendations(items=items, model_version=self.snapshot.version)


def _pick(
    blended: np.ndarray, space: ItemSpace, excluded: set[str], k: int, new_slots: int, min_share: float
) -> list[int]:
    """The top ``k`` items by blended score, with up to ``new_slots`` places for untouched (content-only) items
    that score at least ``min_share`` of the best: averaged neighbour factors rarely outrank the best known
    items, so without reserved places new content would never be seen, and never get the events it needs."""
    order = [int(n) for n in np.argsort(-blended) if blended[n] > 0 and space.item_ids[n] not in excluded]
    if not order:
        return []
    floor = min_share * float(blended[order[0]])
    new = [n for n in order if not space.trained[n] and blended[n] >= floor][:new_slots]
    rest = [n for n in order if n not in new][: k - len(new)]
    return sorted(new + rest, key=lambda n: -blended[n])


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the largest one, so collaborative and content scores blend on one scale."""
    top = float(scores.max(initial=0.0))
    return scores / top if top > 0 else scores


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="recommend")
class RecommendDeployment(ModelReplica[RecommendConfig, Recommender]):
    service: ClassVar[str] = "recommend"
    config_cls = RecommendConfig
    reload_fields = frozenset({"model", "trained_dir"})

    def build_engine(self, config: RecommendConfig) -> Recommender:
        return Recommender(config, background=True)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, Recommendations):
            for item in result.items:
                telemetry.count("content_studio_recommendations", reason=item.reason)
        elif isinstance(result, RetrainReport):
            telemetry.count("content_studio_recommender_retrains", trigger=result.trigger)
        elif method == "record":
            for event in args[0]:
                telemetry.count("content_studio_interactions", event=event.event)

    async def recommend(self, request: RecommendRequest) -> Recommendations:
        return await self.run(self.engine.recommend, request)

    async def similar(self, request: SimilarRequest) -> Recommendations:
        return await self.run(self.engine.similar, request)

    async def record(self, events: list[InteractionIn]) -> list[InteractionAck]:
        return await self.run(self.engine.record, events)

    async def add_items(self, items: list[ItemIn]) -> int:
        return await self.run(self.engine.add_items, items)

    async def interaction_counts(self, item_ids: list[str]) -> dict[str, int]:
        return await self.run(self.engine.store.event_counts, item_ids)

    async def retrain(self) -> RetrainReport:
        """Retrain now on this replica; the others pick the new version up within ``refresh_s``."""
        return await self.run(self.engine.retrain, "admin")
