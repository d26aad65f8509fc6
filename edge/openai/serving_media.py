"""``POST /v1/images/generations`` and ``POST /v1/audio/speech`` (whole, or streamed as it is made)."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from deployments.errors import InvalidRequest, from_exception
from deployments.voice import MEDIA_TYPES
from edge.access import Principal
from edge.dependencies import CallerDep, IngressDep, UserHeader, error_responses
from edge.ingress import Ingress
from edge.openai.media import ImageGenerationRequest, ImageGenerationResponse, SpeechRequest
from edge.openai.streaming import SSE_HEADERS

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
        200: {
            "content": {"audio/wav": {}, "audio/flac": {}, "audio/pcm": {}, "text/event-stream": {}},
            "description": "The audio file; with `stream_format`, the audio as it is made.",
        },
        **error_responses(400, 404, 503, 504),
    },
)
async def speech(body: SpeechRequest, ingress: IngressDep, caller: CallerDep, user: UserHeader = None) -> Response:
    user_id = caller.user(body.user or user)
    if body.stream_format == "sse" and body.response_format == "flac":
        raise InvalidRequest.for_field("stream_format", "flac does not stream (its pieces do not join): use pcm or wav")
    if body.stream_format is not None and body.response_format != "flac":
        return await _speech_stream(body, ingress, caller, user_id)
    result, assignment = await ingress.call_variant("voice", "synthesize", body.to_service(), user_id)
    await ingress.limiter.charge(caller, audio_s=result.duration_s)
    headers = {
        "X-Audio-Sample-Rate": str(result.sample_rate),
        "X-Audio-Duration-S": str(result.duration_s),
        "X-Model": result.model,
        **ingress.variant_headers(assignment),
    }
    return Response(content=result.audio, media_type=result.media_type, headers=headers)


async def _speech_stream(body: SpeechRequest, ingress: Ingress, caller: Principal, user_id: str | None) -> Response:
    """The audio sentence by sentence (``audio``: raw bytes; ``sse``: OpenAI's speech events). The first item is
    awaited first, so a request the voice refuses gets its 4xx; audio seconds are charged as they are made."""
    request, assignment = ingress.route("voice", body.to_service(), user_id)
    [(stream, start)] = await ingress.open_streams("voice", "synthesize_stream", [request], assignment)
    wav = body.response_format == "wav"

    async def chunks() -> AsyncIterator[bytes]:
        if wav:
            yield streaming_wav_header(start.sample_rate)
        async for item in stream:
            if isinstance(item, bytes):
                await ingress.limiter.charge(caller, audio_s=len(item) / 2 / start.sample_rate)
                yield item

    async def events() -> AsyncIterator[str]:
        try:
            async for piece in chunks():
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()})
        except Exception as exc:  # after the answer started: the error goes into the stream, as OpenAI does
            yield _event(from_exception(exc, "voice").body())
            return
        usage = {"input_tokens": start.input_tokens, "output_tokens": 0, "total_tokens": start.input_tokens}
        yield _event({"type": "speech.audio.done", "usage": usage})

    headers = {"X-Audio-Sample-Rate": str(start.sample_rate), "X-Model": start.model, **SSE_HEADERS}
    headers.update(ingress.variant_headers(assignment))
    if body.stream_format == "sse":
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    return StreamingResponse(chunks(), media_type=MEDIA_TYPES[body.response_format], headers=headers)


def _event(data: dict) -> str:
    return f"event: {data.get('type', 'error')}\ndata: {json.dumps(data)}\n\n"


def streaming_wav_header(sample_rate: int) -> bytes:
    """A WAV header for 16-bit mono PCM of unknown length (both sizes at their maximum), as streaming servers
    send it: players read to the end of the stream."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )
