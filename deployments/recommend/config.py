"""Configuration of the recommendation service (its deployment's ``user_config``) and of its retraining."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployments.common import ServiceConfig, StrictModel
from deployments.recommend.schemas import MAX_K, EventType
from deployments.sql import DatabaseConfig

Algorithm = Literal["als", "bpr"]


class TrainingConfig(StrictModel):
    """How the recommender retrains itself on the events it records."""

    algorithm: Algorithm = Field(
        "als", description="implicit's AlternatingLeastSquares or Bayesian Personalized Ranking."
    )
    factors: int = Field(32, ge=2, le=512, description="Latent factors per user and item.")
    iterations: int = Field(15, ge=1, le=1000, description="Training epochs.")
    regularization: float = Field(0.05, ge=0, le=10, description="L2 penalty on the factors.")
    learning_rate: float = Field(0.05, gt=0, le=1, description="BPR's SGD step (ALS has none).")
    seed: int = Field(0, ge=0, description="Seeds factor initialisation, so a retrain on the same events repeats.")
    after_events: int | None = Field(
        1000, ge=1, description="Retrain once this many events arrived since the current version; null: never."
    )
    interval_s: float | None = Field(
        None, gt=0, description="Retrain this long after the current version if any event arrived; null: never."
    )
    lease_s: float = Field(600, gt=0, le=86400, description="How long one replica may hold the training lease.")


class RecommendConfig(ServiceConfig):
    """Configuration of the recommendation service (its deployment's ``user_config``)."""

    model: str | None = Field(  # type: ignore[assignment]
        None,
        description="Seed folder (`als.npz` or `bpr.npz`, `catalog.npz`, `meta.json`). null: a fresh install, "
        "which serves popular and fresh items until its first retrain learns from recorded events.",
    )
    database: DatabaseConfig = Field(
        default_factory=DatabaseConfig, description="This replica's connection pool to `store_url`."
    )

    @property
    def name(self) -> str:
        return self.served_model_name or self.model or "recommend"

    device: Literal["cpu"] = Field("cpu", description="implicit's PyPI build computes on the CPU.")
    dtype: Literal["auto", "float32"] = Field("auto", description="Factors are float32.")
    store_url: str = Field(
        "sqlite:///data/recommend.db",
        description="SQLAlchemy URL of the interaction store, or `env:NAME` to read it from the environment (a "
        "secret); a relative SQLite path resolves against the project root ($CONTENT_STUDIO_ROOT).",
    )
    trained_dir: str = Field(
        "data/recommend-models",
        description="Folder of retrained versions (shared by all replicas: a volume on a cluster); relative "
        "paths resolve against the project root. `model` is the seed used until a first retrain.",
    )
    keep_versions: int = Field(
        3, ge=1, le=100, description="Trained versions kept in `trained_dir`; older ones are deleted at a publish."
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
    content_vectors: Literal["hashed", "embed"] = Field(
        "hashed",
        description="Where content vectors come from: `hashed` words (nothing to load; the local default) or the "
        "`embed` service (a transformers encoder; it must be deployed in the application). A change re-vectorises "
        "items (each vector is stored with the encoder that made it).",
    )
    content_dim: int = Field(
        256,
        ge=16,
        le=4096,
        description="Size of the content vectors (computed once per item, stored with it; with `embed`, the "
        "`dimensions` asked of the service). A change re-vectorises items.",
    )
    retrieval: Literal["auto", "exact", "approximate"] = Field(
        "auto",
        description="`exact`: score every item (small catalogues, evaluation). `approximate`: candidates from ANN "
        "indexes (HNSW) re-ranked exactly. `auto`: approximate from `exact_below` items on.",
    )
    exact_below: int = Field(20_000, ge=0, le=100_000_000, description="`auto` scores exactly below this many items.")
    ann_candidates: int = Field(
        400,
        ge=10,
        le=10_000,
        description="Candidates each ANN index returns for exact re-ranking (recommendations' content search: "
        "`profile_candidates`). The blend's top-k is not each index's top-k: at 1M items (bench catalogue), 400 "
        "found 0.978 of the exact similar items.",
    )
    profile_candidates: int = Field(
        1600,
        ge=10,
        le=10_000,
        description="Candidates the content index returns for a user's content profile (recommendations). The "
        "blend's misses came from content ranks beyond 400: at 1M items recall@10 against exact was 0.944 at "
        "400, 0.956 at 1200, 0.959 at 1600 (+9 ms in process); more factor candidates did not help.",
    )
    ann_expansion: int = Field(
        128, ge=16, le=4096, description="HNSW search breadth (`ef`): higher finds more of the exact top-k, slower."
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
