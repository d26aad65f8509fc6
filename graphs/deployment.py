"""The content pipeline as a Serve deployment: thin wiring over ``ContentPipeline`` (reads go to a thread, so
the event loop keeps serving)."""

from __future__ import annotations

import asyncio
from typing import Literal

from ray import serve

from graphs.pipeline import ContentPipeline
from graphs.schemas import ContentPage, ContentRecord


@serve.deployment(name="pipeline")
class PipelineDeployment(ContentPipeline):
    async def check_health(self) -> None:
        """Serve's periodic probe keeps the outbox relay running even on a replica no request reached yet."""
        self.relay.ensure_running()

    def __del__(self) -> None:
        """Serve calls it when the replica shuts down (a scale-down, an update, the app deleted)."""
        self.close()

    async def experiment_engagement(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per experiment variant: stored content it made, and interactions with that content."""
        made = await asyncio.to_thread(self.catalog.variant_contents)
        ids = sorted({content_id for _, _, content_id in made})
        counts: dict[str, int] = await self.handles["recommend"].interaction_counts.remote(ids) if ids else {}
        out: dict[str, dict[str, dict[str, int]]] = {}
        for experiment, variant, content_id in made:
            entry = out.setdefault(experiment, {}).setdefault(variant, {"contents": 0, "interactions": 0})
            entry["contents"] += 1
            entry["interactions"] += counts.get(content_id, 0)
        return out

    async def get_record(self, content_id: str) -> ContentRecord | None:
        return await asyncio.to_thread(self.get, content_id)

    async def list_records(self, limit: int, offset: int) -> ContentPage:
        return await asyncio.to_thread(self.page, limit, offset)

    async def get_asset(self, content_id: str, kind: Literal["image", "audio"]) -> bytes | None:
        return await asyncio.to_thread(self.asset, content_id, kind)

    async def outbox(self, content_id: str | None = None) -> dict[str, int]:
        """Delivered and pending outbox entries (of one content, or all): what the recommender is still owed."""
        return await asyncio.to_thread(self.catalog.outbox_state, content_id)
