"""``/v1/images/generations`` and ``/v1/audio/speech``: requests converted to the image and voice services'
own, and the image response (speech answers with the audio itself)."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from deployments.common import SEED_MAX
from deployments.image import MAX_PROMPT_CHARS as MAX_IMAGE_PROMPT_CHARS
from deployments.image import ImageRequest, ImageResult
from deployments.voice import MAX_INPUT_CHARS, AudioFormat, VoiceRequest
from edge.openai.protocol import NOT_BLANK, OpenAIModel

# --- images -----------------------------------------------------------------------------------------------
_SIDES = "|".join(str(n) for n in range(2048, 7, -8))  # the multiples of 8 up to the largest side
SIZE_PATTERN = f"^({_SIDES})x({_SIDES})$"


class ImageGenerationRequest(OpenAIModel):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS, pattern=NOT_BLANK)
    model: str | None = Field(None, max_length=256)
    n: int | None = Field(None, ge=1, le=8, description="Images (the config may allow fewer).")
    size: str | None = Field(
        None,
        pattern=SIZE_PATTERN,
        description="`WIDTHxHEIGHT`, each a multiple of 8 up to 2048 (the config may allow less); default from config.",
    )
    response_format: Literal["b64_json"] | None = Field(None, description="Images come back base64-encoded.")
    quality: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    style: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    background: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    moderation: str | None = Field(None, max_length=32, description="Accepted and ignored.")
    output_format: Literal["png"] | None = Field(None, description="PNG only.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Accepted and ignored.")
    user: str | None = Field(None, max_length=256)
    negative_prompt: str | None = Field(None, max_length=MAX_IMAGE_PROMPT_CHARS, description="Extension.")
    steps: int | None = Field(
        None, ge=1, le=150, description="Denoising steps (extension; the config may allow fewer)."
    )
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0, description="Guidance (extension).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)

    def to_service(self) -> ImageRequest:
        width = height = None
        if self.size:
            width, height = (int(s) for s in self.size.split("x"))
        return ImageRequest(
            model=self.model,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=width,
            height=height,
            seed=self.seed,
            n=self.n or 1,
        )


class ImageData(OpenAIModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageGenerationResponse(OpenAIModel):
    created: int
    data: list[ImageData]
    model: str
    seed: int
    size: str
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, result: ImageResult) -> ImageGenerationResponse:
        import base64

        return cls(
            created=int(time.time()),
            data=[ImageData(b64_json=base64.b64encode(png).decode()) for png in result.images],
            model=result.model,
            seed=result.seed,
            size=f"{result.width}x{result.height}",
        )


# --- speech -----------------------------------------------------------------------------------------------
class SpeechRequest(OpenAIModel):
    model: str | None = Field(None, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, pattern=NOT_BLANK)
    voice: str | None = Field(None, max_length=128, description="A speaker of the model, or an alias.")
    language: str | None = Field(None, max_length=32, description="For multilingual models (extension).")
    response_format: AudioFormat | None = Field(None, description="wav (default here), flac, or raw 16-bit pcm.")
    speed: float | None = Field(None, ge=1.0, le=1.0, description="Only 1.0 is supported.")
    instructions: str | None = Field(None, max_length=4096, description="Accepted and ignored.")
    stream_format: Literal["audio", "sse"] | None = Field(
        None,
        description="Left out: the whole file in one response. `audio`: the audio as it is made, sentence by "
        "sentence (pcm and wav; flac comes whole: its pieces do not join). `sse`: `speech.audio.delta` events "
        "with base64 audio, then `speech.audio.done` (pcm and wav).",
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")

    def to_service(self) -> VoiceRequest:
        return VoiceRequest(
            model=self.model,
            input=self.input,
            voice=self.voice,
            language=self.language,
            response_format=self.response_format or "wav",
            seed=self.seed,
        )
