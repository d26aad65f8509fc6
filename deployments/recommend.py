"""Recommendation service: collaborative filtering with ``implicit`` ALS, with popularity for cold users.

The trained model lives in a folder: implicit's own ``als.npz`` (saved and loaded with ``allow_pickle=False``)
and ``catalog.npz`` with the user and item id maps and the training matrix. Interactions recorded through the
service go to the recommender's own store (SQLAlchemy; SQLite by default). Every replica reads a user's
recorded events from that store when it answers, so all replicas agree and a user's new events count at once
(ALS recomputes the user's factors from their items).
"""

from __future__ import annotations

import threading
import time
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
    resolve_model_source,
    resolve_placement,
)
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

EventType = Literal["view", "like", "listen", "share"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
MAX_K = 100


class RecommendConfig(ServiceConfig):
    """Configuration of the recommendation service (its deployment's ``user_config``)."""

    device: Literal["cpu"] = Field("cpu", description="implicit's PyPI build computes on the CPU.")
    dtype: Literal["auto", "float32"] = Field("auto", description="Factors are float32.")
    store_url: str = Field(
        "sqlite:///data/recommend.db",
        description="SQLAlchemy URL of the interaction store; a relative SQLite path resolves against the "
        "project root ($CONTENT_STUDIO_ROOT).",
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
    reason: Literal["als", "popular", "fresh", "similar"]


class Recommendations(StrictModel):
    items: list[ScoredItem]


class ItemIn(StrictModel):
    """An item to make known to the recommender, e.g. content the pipeline just stored."""

    item_id: str = Field(pattern=ID_PATTERN)
    title: str = Field("", max_length=500)


class InteractionAck(StrictModel):
    accepted: int
    user_id: str
    item_id: str
    weight: float


# --- model folder -----------------------------------------------------------------------------------------
def save_model_dir(out: Path, model: Any, matrix: Any, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """Write a trained implicit model and its id maps in the folder layout the service loads."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out / "als.npz"))
    matrix = matrix.tocsr()
    np.savez(
        out / "catalog.npz",
        user_ids=np.asarray(user_ids, dtype=str),
        item_ids=np.asarray(item_ids, dtype=str),
        data=matrix.data,
        indices=matrix.indices,
        indptr=matrix.indptr,
        shape=np.asarray(matrix.shape),
    )


class InteractionStore:
    """Interactions the recommender owns, in any SQLAlchemy database (SQLite by default)."""

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
            sa.Column("created_at", sa.Float, nullable=False, index=True),
        )
        create_tables(meta, self.engine)

    def add_items(self, items: list[ItemIn]) -> int:
        """Register items; ones already known are left as they are. Returns how many were new."""
        import sqlalchemy as sa

        now = time.time()
        with self.engine.begin() as conn:
            known = set(self.known_items([i.item_id for i in items], conn))
            rows = [
                {"item_id": i.item_id, "title": i.title, "created_at": now} for i in items if i.item_id not in known
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


# --- engine -----------------------------------------------------------------------------------------------
class Recommender:
    """Answers recommendations and similar items from an implicit model; records interactions."""

    def __init__(self, config: RecommendConfig, model: Any = None, catalog: dict[str, Any] | None = None) -> None:
        import scipy.sparse as sp

        self.config = config
        self.placement = resolve_placement("cpu")  # the PyPI build of implicit computes on the CPU
        if model is None or catalog is None:
            from implicit.cpu.als import AlternatingLeastSquares

            folder = Path(resolve_model_source(config.model))
            model = AlternatingLeastSquares.load(str(folder / "als.npz"))
            with np.load(folder / "catalog.npz", allow_pickle=False) as data:
                catalog = {key: data[key] for key in data.files}
        self.model = model
        self.user_ids: list[str] = [str(u) for u in catalog["user_ids"]]
        self.item_ids: list[str] = [str(i) for i in catalog["item_ids"]]
        self.user_index = {u: n for n, u in enumerate(self.user_ids)}
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.user_items = sp.csr_matrix(
            (catalog["data"], catalog["indices"], catalog["indptr"]), shape=tuple(catalog["shape"])
        )
        self.store = InteractionStore(config.store_url)
        self._lock = threading.Lock()  # implicit's recalculate_user is not documented as thread-safe
        self._popular_cache: tuple[float, list[tuple[str, float]]] | None = None

    def apply_config(self, config: RecommendConfig) -> None:
        if config.store_url != self.config.store_url:
            self.store = InteractionStore(config.store_url)
        self.config = config

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": str(self.model.item_factors.dtype),
            "algorithm": type(self.model).__name__,
            "factors": int(self.model.factors),
            "users": len(self.user_ids),
            "items": len(self.item_ids),
            "store": self.store.engine.url.render_as_string(hide_password=True),
        }

    def check_health(self) -> None:
        self.store.user_events("__health__")
        if self.item_ids:
            self.model.similar_items(0, N=1)

    # --- interactions -------------------------------------------------------------------------------------
    def add_items(self, items: list[ItemIn]) -> int:
        return self.store.add_items(items)

    def record(self, events: list[InteractionIn]) -> list[InteractionAck]:
        candidates = sorted({e.item_id for e in events if e.item_id not in self.item_index})
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
    def _k(self, k: int | None) -> int:
        k = k or self.config.default_k
        if k > self.config.max_k:
            raise RequestError("k", f"must be at most {self.config.max_k}")
        return k

    def _user_history(self, user_id: str):
        """The user's ALS row (training history plus recorded events on trained items) and every item seen."""
        import scipy.sparse as sp

        n_items = len(self.item_ids)
        idx = self.user_index.get(user_id)
        row = self.user_items[idx] if idx is not None else sp.csr_matrix((1, n_items), dtype=np.float32)
        events = self.store.user_events(user_id)
        seen = {self.item_ids[i] for i in row.indices} | {item for item, _ in events}
        recorded = [(self.item_index[i], w) for i, w in events if i in self.item_index]
        if recorded:
            cols, vals = zip(*recorded, strict=True)
            row = row + sp.csr_matrix((vals, ([0] * len(cols), cols)), shape=(1, n_items), dtype=np.float32)
        return idx, sp.csr_matrix(row, dtype=np.float32), bool(recorded), seen

    def popular(self) -> list[tuple[str, float]]:
        """All items by total engagement (training data plus recorded events), best first, scores in [0, 1]."""
        cache = self._popular_cache
        if cache is not None and time.monotonic() - cache[0] < self.config.popular_cache_s:
            return cache[1]
        totals = dict(zip(self.item_ids, np.asarray(self.user_items.sum(axis=0)).ravel().tolist(), strict=True))
        for item, weight in self.store.item_totals().items():
            totals[item] = totals.get(item, 0.0) + weight
        norm = max(totals.values(), default=0.0) or 1.0
        ranked = sorted(((item, float(total / norm)) for item, total in totals.items()), key=lambda t: -t[1])
        self._popular_cache = (time.monotonic(), ranked)
        return ranked

    def recommend(self, request: RecommendRequest) -> Recommendations:
        k = self._k(request.k)
        idx, row, has_new_events, seen = self._user_history(request.user_id)
        excluded = seen if request.exclude_seen else set()
        items: list[ScoredItem] = []
        if row.nnz:
            with self._lock:
                ids, scores = self.model.recommend(
                    idx if idx is not None else 0,
                    row,
                    N=k,
                    filter_already_liked_items=request.exclude_seen,
                    recalculate_user=idx is None or has_new_events,
                )
            items = [
                ScoredItem(item_id=self.item_ids[int(i)], score=float(s), reason="als")
                for i, s in zip(ids, scores, strict=True)
                if np.isfinite(s)
            ]
        chosen = {item.item_id for item in items}

        def fill(candidates: list[tuple[str, float]], reason: Literal["popular", "fresh"], upto: int) -> None:
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
        return Recommendations(items=items)

    def similar(self, request: SimilarRequest) -> Recommendations:
        k = self._k(request.k)
        idx = self.item_index.get(request.item_id)
        if idx is None:
            raise RequestError("item_id", f"unknown item {request.item_id!r}", status_code=404)
        with self._lock:
            ids, scores = self.model.similar_items(idx, N=min(k + 1, len(self.item_ids)))
        items = [
            ScoredItem(item_id=self.item_ids[int(i)], score=float(s), reason="similar")
            for i, s in zip(ids, scores, strict=True)
            if int(i) != idx
        ]
        return Recommendations(items=items[:k])


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="recommend")
class RecommendDeployment(ModelReplica[RecommendConfig, Recommender]):
    service: ClassVar[str] = "recommend"
    config_cls = RecommendConfig
    reload_fields = frozenset({"model"})

    def build_engine(self, config: RecommendConfig) -> Recommender:
        return Recommender(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, Recommendations):
            for item in result.items:
                telemetry.count("content_studio_recommendations", reason=item.reason)
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
