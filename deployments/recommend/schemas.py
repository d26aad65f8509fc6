"""Requests and answers of the recommendation service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from deployments.common import StrictModel

EventType = Literal["view", "like", "listen", "share"]
Reason = Literal["als", "content", "popular", "fresh", "similar"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
MAX_K = 100
MAX_ITEM_TEXT = 20_000


class InteractionIn(StrictModel):
    user_id: str = Field(pattern=ID_PATTERN, description="Any user id; new users are welcome.", examples=["user-1"])
    item_id: str = Field(pattern=ID_PATTERN, description="An item the recommender knows.", examples=["item-3"])
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
    title: str | None = Field(None, description="The item's title, when it was registered with one.")


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
    holder: str = Field(description="The replica that held the training lease.")
    started_at: float = Field(description="When it took the lease (epoch seconds).")
    finished_at: float = Field(description="When the version was published (epoch seconds).")
