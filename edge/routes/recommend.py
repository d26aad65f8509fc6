"""Recommendation routes: interactions (events), recommendations, similar items, and an admin retrain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import Field

from deployments.common import StrictModel
from deployments.errors import TooLarge
from deployments.recommend import (
    ID_PATTERN,
    MAX_K,
    InteractionIn,
    Recommendations,
    RecommendRequest,
    RetrainReport,
    SimilarRequest,
)
from edge.dependencies import CallerDep, IngressDep, error_responses, require_admin

router = APIRouter(tags=["Recommendations"])
KParam = Annotated[int | None, Query(ge=1, le=MAX_K, description="How many items (default from config).")]


class InteractionBatch(StrictModel):
    events: list[InteractionIn] = Field(min_length=1, max_length=100_000)


class InteractionAccepted(StrictModel):
    accepted: int
    events: list[dict[str, Any]]


class BatchAccepted(StrictModel):
    accepted: int


@router.post(
    "/v1/interactions", status_code=202, response_model=InteractionAccepted, responses=error_responses(404, 503, 504)
)
async def interactions(body: InteractionIn, ingress: IngressDep, caller: CallerDep) -> InteractionAccepted:
    body = body.model_copy(update={"user_id": caller.user(body.user_id)})  # a user key records as its user
    acks = await ingress.call("recommend", "record", [body], idempotent=False)
    return InteractionAccepted(accepted=len(acks), events=[a.model_dump() for a in acks])


@router.post(
    "/v1/interactions/batch",
    status_code=202,
    response_model=BatchAccepted,
    responses=error_responses(404, 503, 504),
)
async def interactions_batch(body: InteractionBatch, ingress: IngressDep, caller: CallerDep) -> BatchAccepted:
    if len(body.events) > ingress.config.max_batch_events:
        raise TooLarge.for_field("events", f"at most {ingress.config.max_batch_events} events per batch")
    events = [e.model_copy(update={"user_id": caller.user(e.user_id)}) for e in body.events]
    acks = await ingress.call("recommend", "record", events, idempotent=False)
    return BatchAccepted(accepted=len(acks))


@router.post("/v1/recommend/retrain", response_model=RetrainReport, responses=error_responses(409, 503, 504))
async def retrain(ingress: IngressDep, caller: CallerDep) -> RetrainReport:
    """Retrain the recommender on every recorded event now (admin keys only: 403 otherwise; 409 while a
    retrain runs). Every replica serves the new version within its `refresh_s`."""
    require_admin(caller)
    limit = ingress.config.timeouts_s.recommend_retrain
    return await ingress.call("recommend", "retrain", timeout=limit, idempotent=False)


@router.get("/v1/recommendations", response_model=Recommendations, responses=error_responses(400, 503, 504))
async def recommendations(
    ingress: IngressDep,
    caller: CallerDep,
    user_id: Annotated[str, Query(pattern=ID_PATTERN, description="The user to recommend for.")],
    k: KParam = None,
    exclude_seen: bool = True,
) -> Recommendations:
    # A user key gets its own user's recommendations, whichever user_id it names.
    request = RecommendRequest(user_id=caller.user(user_id), k=k, exclude_seen=exclude_seen)
    return await ingress.call("recommend", "recommend", request)


@router.get(
    "/v1/items/{item_id}/similar", response_model=Recommendations, responses=error_responses(400, 404, 503, 504)
)
async def similar(
    ingress: IngressDep, item_id: Annotated[str, Path(pattern=ID_PATTERN)], k: KParam = None
) -> Recommendations:
    return await ingress.call("recommend", "similar", SimilarRequest(item_id=item_id, k=k))
