"""Recommendation service: collaborative filtering with ``implicit`` (ALS or BPR) that keeps learning.

- ``config``: the service's ``user_config`` and its retraining policy; ``schemas``: requests and answers.
- ``store``: its own SQL store (events, items, the training lease), migrated with Alembic.
- ``model``: trained versions (factors, id maps) and their registry; ``space``: every rankable item, grown one
  item at a time; ``vectors``: content vectors in constant time per item; ``ann``: HNSW candidate search.
- ``service``: ``Recommender``, the plain class; ``deployment``: the Serve deployment.
"""

from deployments.recommend.config import RecommendConfig, TrainingConfig
from deployments.recommend.deployment import RecommendDeployment
from deployments.recommend.model import FactorModel, ModelRegistry, load_model_dir, save_model_dir, train_factors
from deployments.recommend.schemas import (
    ID_PATTERN,
    MAX_ITEM_TEXT,
    MAX_K,
    InteractionAck,
    InteractionIn,
    ItemIn,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    ScoredItem,
    SimilarRequest,
)
from deployments.recommend.service import Recommender, TrainingBusy
from deployments.recommend.space import ItemSpace
from deployments.recommend.store import InteractionStore

__all__ = [
    "ID_PATTERN",
    "MAX_ITEM_TEXT",
    "MAX_K",
    "FactorModel",
    "InteractionAck",
    "InteractionIn",
    "InteractionStore",
    "ItemIn",
    "ItemSpace",
    "ModelRegistry",
    "RecommendConfig",
    "RecommendDeployment",
    "RecommendRequest",
    "Recommendations",
    "Recommender",
    "RetrainReport",
    "ScoredItem",
    "SimilarRequest",
    "TrainingBusy",
    "TrainingConfig",
    "load_model_dir",
    "save_model_dir",
    "train_factors",
]
