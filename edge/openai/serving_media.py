"""``POST /v1/images/generations`` and ``POST /v1/audio/speech``."""

from __future__ import annotations

from fastapi import APIRouter, Response

from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.openai.protocol import ImageGenerationRequest, ImageGenerationResponse, SpeechRequest

router = APIRouter(tags=["OpenAI"])


@router.post(
    "/v1/images/generations",
    response_model=ImageGenerationResponse,
    responses=error_responses(400, 404, 503, 504),
)
async def images(
    body: ImageGenerationRequest, response: Response, ingress: IngressDep, caller: CallerDep, user: UserHeader = None
) -> ImageGenerationResponse:
    user_id = caller.user(body.user or user)
    result, assignment = await ingress.call_variant("image", "generate", body.to_service(), user_id, response)
    await ingress.limiter.charge(caller, images=len(result.images))
    return ImageGenerationResponse.of(result).model_copy(update={"variant": assignment and assignment.variant})


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={
        200: {"content": {"audio/wav": {}, "audio/flac": {}, "audio/pcm": {}}, "description": "The audio file."},
        **error_responses(400, 404, 503, 504),
    },
)
async def speech(body: SpeechRequest, ingress: IngressDep, caller: CallerDep, user: UserHeader = None) -> Response:
    user_id = caller.user(body.user or user)
    result, assignment = await ingress.call_variant("voice", "synthesize", body.to_service(), user_id)
    await ingress.limiter.charge(caller, audio_s=result.duration_s)
    headers = {
        "X-Audio-Sample-Rate": str(result.sample_rate),
        "X-Audio-Duration-S": str(result.duration_s),
        "X-Model": result.model,
        **ingress.variant_headers(assignment),
    }
    return Response(content=result.audio, media_type=result.media_type, headers=headers)
