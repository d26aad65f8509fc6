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
from deployments.recommend.service import EmbedCall, Recommender
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

EMBED_TIMEOUT_S = 120.0


@serve.deployment(name="recommend")
class RecommendDeployment(ModelReplica[RecommendConfig, Recommender]):
    service: ClassVar[str] = "recommend"
    config_cls = RecommendConfig
    reload_fields = frozenset({"model", "trained_dir"})

    def __init__(
        self, config: dict[str, Any] | None = None, model: Recommender | None = None, embed: Any = None
    ) -> None:
        self._embed = embed  # the embed deployment's handle, when the application deploys it
        super().__init__(config, model)

    def load_model(self, config: RecommendConfig) -> Recommender:
        """The replica takes requests once its item space is open (at a million items a load takes seconds:
        the first request must not pay it, nor time out the pipeline's recommendations stage)."""
        embed = self._embed_call() if config.content_vectors == "embed" else None
        model = Recommender(config, background=True, embed=embed)
        model.warm()
        return model

    def _embed_call(self) -> EmbedCall | None:
        """The embedding service, called from the recommender's threads (never its event loop)."""
        from deployments.embed import EmbedRequest

        handle = self._embed
        if handle is None:
            return None

        def vectors(texts: list[str], dimensions: int) -> list[list[float]]:
            request = EmbedRequest(texts=texts, dimensions=dimensions)
            return handle.embed.remote(request).result(timeout_s=EMBED_TIMEOUT_S).vectors

        model = handle.describe.remote().result(timeout_s=EMBED_TIMEOUT_S)["model"]
        return EmbedCall(vectors, model)

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
