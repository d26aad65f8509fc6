"""The recommendation service as a Ray Serve deployment: thin wiring over ``Recommender``."""

from __future__ import annotations

from typing import Any, ClassVar

from ray import serve

from deployments.recommend.config import RecommendConfig
from deployments.recommend.schemas import (
    InteractionAck,
    InteractionIn,
    ItemIn,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    SimilarRequest,
)
from deployments.recommend.service import Recommender
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry


@serve.deployment(name="recommend")
class RecommendDeployment(ModelReplica[RecommendConfig, Recommender]):
    service: ClassVar[str] = "recommend"
    config_cls = RecommendConfig
    reload_fields = frozenset({"model", "trained_dir"})

    def load_model(self, config: RecommendConfig) -> Recommender:
        """The replica takes requests once its item space is open (at a million items a load takes seconds:
        the first request must not pay it, nor time out the pipeline's recommendations stage)."""
        model = Recommender(config, background=True)
        model.warm()
        return model

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
        return await self.run(self.model.recommend, request)

    async def similar(self, request: SimilarRequest) -> Recommendations:
        return await self.run(self.model.similar, request)

    async def record(self, events: list[InteractionIn]) -> list[InteractionAck]:
        return await self.run(self.model.record, events)

    async def add_items(self, items: list[ItemIn]) -> int:
        return await self.run(self.model.add_items, items)

    async def interaction_counts(self, item_ids: list[str]) -> dict[str, int]:
        return await self.run(self.model.interaction_counts, item_ids)

    async def retrain(self) -> RetrainReport:
        """Retrain now on this replica; the others pick the new version up within ``refresh_s``."""
        return await self.run(self.model.retrain, "admin")
