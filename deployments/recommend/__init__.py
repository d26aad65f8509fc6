"""Recommendation service: collaborative filtering with ``implicit`` (ALS or BPR) that keeps learning.

- ``config``: the service's ``user_config`` and its retraining policy; ``schemas``: requests and answers.
- ``store``: its own SQL store (events, items, the training lease), migrated with Alembic.
- ``model``: trained versions (factors, id maps) and their registry; ``space``: every rankable item, grown one
  item at a time; ``vectors``: content vectors in constant time per item; ``ann``: HNSW candidate search.
- ``service``: ``Recommender``, the plain class (answers, events); ``upkeep``: keeping its model current (versions,
  the item space, retraining); ``deployment``: the Serve deployment.
"""

from deployments.recommend.config import RecommendConfig
from deployments.recommend.deployment import RecommendDeployment
from deployments.recommend.schemas import (
    ID_PATTERN,
    MAX_ITEM_TEXT,
    MAX_K,
    InteractionIn,
    ItemIn,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    ScoredItem,
    SimilarRequest,
)
from deployments.recommend.service import Recommender
from deployments.recommend.store import InteractionStore

__all__ = [
    "ID_PATTERN",
    "MAX_ITEM_TEXT",
    "MAX_K",
    "InteractionIn",
    "InteractionStore",
    "ItemIn",
    "RecommendConfig",
    "RecommendDeployment",
    "RecommendRequest",
    "Recommendations",
    "Recommender",
    "RetrainReport",
    "ScoredItem",
    "SimilarRequest",
]
