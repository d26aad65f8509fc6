"""``GET /v1/models`` (and one model), and vLLM's ``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from deployments.errors import NotFound
from edge.dependencies import IngressDep, error_responses
from edge.openai.protocol import ModelCard, ModelList
from edge.openai.tokens import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(tags=["OpenAI"])


async def model_cards(ingress: IngressDep) -> list[ModelCard]:
    described = await ingress.describe_all()
    cards = [
        ModelCard(id=info["model"], created=int(info.get("loaded_at") or 0), service=info["service"])
        for name, info in described.items()
        if info.get("status") == "ok" and name != "recommend"
    ]
    cards += [  # an experiment's public name: requests naming it are split between its variants
        ModelCard(id=e.model, created=0, service=e.service) for e in ingress.config.experiments.values() if e.model
    ]
    return cards


@router.get("/v1/models", response_model=ModelList, responses=error_responses())
async def models(ingress: IngressDep) -> ModelList:
    return ModelList(data=await model_cards(ingress))


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=error_responses(404))
async def model(model_id: Annotated[str, Path(max_length=256)], ingress: IngressDep) -> ModelCard:
    for card in await model_cards(ingress):
        if card.id == model_id:
            return card
    raise NotFound(f"model {model_id!r} is not served here", "model_id")


@router.post("/tokenize", response_model=TokenizeResponse, responses=error_responses(400, 404, 503, 504))
async def tokenize(body: TokenizeRequest, ingress: IngressDep) -> TokenizeResponse:
    """Token ids of a prompt, or of chat messages through the model's chat template (as vLLM's route)."""
    request, _ = ingress.route("text", body.to_service(), None)
    out = await ingress.call("text", "tokenize", request, body.add_special_tokens, body.return_token_strs)
    return TokenizeResponse(
        count=out.count, max_model_len=out.max_model_len, tokens=out.tokens, token_strs=out.token_strs
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=error_responses(400, 404, 503, 504))
async def detokenize(body: DetokenizeRequest, ingress: IngressDep) -> DetokenizeResponse:
    assignment = ingress.router.assign("text", None, body.model)
    model = None if assignment else body.model  # a variant serves its own model
    deployment = assignment.deployment if assignment else None
    return DetokenizeResponse(
        prompt=await ingress.call("text", "detokenize", body.tokens, model, deployment=deployment)
    )
