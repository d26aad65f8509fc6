"""OpenAI-compatible request and response shapes, and their conversion to the services' own requests.

Kept apart from the routes (as in vLLM's entrypoints): each request model validates its bounds, so bad input is
answered by FastAPI with 422 naming the field, and converts itself to the service request at the boundary.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import Field, field_validator

from deployments.common import StrictModel
from deployments.image import MAX_PROMPT_CHARS as MAX_IMAGE_PROMPT_CHARS
from deployments.image import ImageRequest, ImageResult
from deployments.text import MAX_PROMPT_CHARS, MAX_TOKENS_BOUND, ChatMessage, TextRequest, TextResult
from deployments.voice import MAX_INPUT_CHARS, AudioFormat, VoiceRequest

Seed = Field(None, ge=0, le=2**63 - 1, description="Same seed, same output (per model and device).")


def _stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class StreamOptions(StrictModel):
    include_usage: bool = False


class _SamplingFields(StrictModel):
    model: str | None = Field(None, max_length=256, description="The served model's name (see /v1/models).")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_BOUND, description="End-of-text not before (as in vLLM).")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    seed: int | None = Seed
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences.")
    stream: bool = Field(False, description="Answer with server-sent events, OpenAI's chunk format, then [DONE].")
    stream_options: StreamOptions | None = Field(None, description="`include_usage`: a last chunk with usage.")
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = _stop_list(value)
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop sequences must be 1 to 64 characters")
        return value

    def _sampling(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "min_tokens": self.min_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": _stop_list(self.stop),
        }


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(description="The prompt; a list must hold exactly one prompt.")

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("exactly one prompt per request")
        if not prompts[0].strip():
            raise ValueError("must not be empty")
        if len(prompts[0]) > MAX_PROMPT_CHARS:
            raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters")
        return value

    def to_service(self) -> TextRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return TextRequest(prompt=prompt, **self._sampling())


class ContentPart(StrictModel):
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessageIn(StrictModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] = Field(description="Text, or a list of text parts.")
    name: str | None = Field(None, max_length=64)

    def to_service(self) -> ChatMessage:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND, description="Alias of max_tokens.")

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, value: list[ChatMessageIn]) -> list[ChatMessageIn]:
        total = sum(len(m.to_service().content) for m in value)
        if total > MAX_PROMPT_CHARS:
            raise ValueError(f"total message text must be at most {MAX_PROMPT_CHARS} characters")
        if not any(m.to_service().content.strip() for m in value):
            raise ValueError("at least one message must have text")
        return value

    def to_service(self) -> TextRequest:
        sampling = self._sampling()
        sampling["max_tokens"] = self.max_completion_tokens or self.max_tokens
        return TextRequest(messages=[m.to_service() for m in self.messages], **sampling)


class Usage(StrictModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, result: TextResult) -> Usage:
        return cls(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )


class CompletionChoice(StrictModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionResponse(StrictModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, result: TextResult) -> CompletionResponse:
        return cls(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=result.model,
            choices=[CompletionChoice(index=0, text=result.text, finish_reason=result.finish_reason)],
            usage=Usage.of(result),
        )


class AssistantMessage(StrictModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(StrictModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(StrictModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    variant: str | None = Field(None, description="Experiment variant that answered (also `X-Model-Variant`).")

    @classmethod
    def of(cls, result: TextResult) -> ChatCompletionResponse:
        return cls(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=result.model,
            choices=[
                ChatChoice(index=0, message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)
            ],
            usage=Usage.of(result),
        )


_SIZE = re.compile(r"^(\d{1,4})x(\d{1,4})$")


class ImageGenerationRequest(StrictModel):
    prompt: str = Field(min_length=1, max_length=MAX_IMAGE_PROMPT_CHARS)
    model: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=8)
    size: str | None = Field(None, description="`WIDTHxHEIGHT`, each a multiple of 8; default from config.")
    response_format: Literal["b64_json"] = Field("b64_json", description="Images come back base64-encoded.")
    negative_prompt: str | None = Field(None, max_length=MAX_IMAGE_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps (extension).")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0, description="Guidance (extension).")
    seed: int | None = Seed
    user: str | None = Field(None, max_length=256)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _SIZE.match(value)
        if not match:
            raise ValueError("must look like 512x512")
        for side in match.groups():
            if int(side) < 8 or int(side) % 8:
                raise ValueError("width and height must be positive multiples of 8")
        return value

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
            n=self.n,
        )


class ImageData(StrictModel):
    b64_json: str
    revised_prompt: str | None = None


class ImageGenerationResponse(StrictModel):
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


class SpeechRequest(StrictModel):
    model: str | None = Field(None, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str | None = Field(None, max_length=128, description="A speaker of the model, or an alias.")
    language: str | None = Field(None, max_length=32, description="For multilingual models (extension).")
    response_format: AudioFormat = Field("wav", description="wav (default here), flac, or raw 16-bit pcm.")
    speed: float = Field(1.0, ge=1.0, le=1.0, description="Only 1.0 is supported.")
    seed: int | None = Seed
    user: str | None = Field(None, max_length=256, description="End-user id: sticky experiment assignment.")

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def to_service(self) -> VoiceRequest:
        return VoiceRequest(
            model=self.model,
            input=self.input,
            voice=self.voice,
            language=self.language,
            response_format=self.response_format,
            seed=self.seed,
        )


class ModelCard(StrictModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "content-studio"
    service: str


class ModelList(StrictModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_chunk(chunk_id: str, created: int, model: str, text: str, finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": chunk_id, "object": "text_completion", "created": created, "model": model, "choices": [choice]}


def chat_chunk(chunk_id: str, created: int, model: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
