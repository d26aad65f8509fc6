"""Image service: a ``diffusers`` text-to-image pipeline that makes the visuals."""

from __future__ import annotations

import io
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field
from ray import serve

from deployments.batching import BatchedMethods, BatchingConfig
from deployments.common import (
    SEED_MAX,
    Narrative,
    ServiceConfig,
    StrictModel,
    memory_bytes,
    resolve_dtype,
    resolve_model_source,
    resolve_placement,
)
from deployments.errors import InvalidRequest
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

MAX_PROMPT_CHARS = 2000
MAX_SIDE = 2048


class ImageConfig(ServiceConfig):
    """Configuration of the image service (its deployment's ``user_config``)."""

    weights_variant: str | None = Field(
        None, description="Which saved weights of the checkpoint to load (diffusers' `variant`), e.g. `fp16`."
    )
    default_steps: int = Field(4, ge=1, le=150, description="Denoising steps when the request omits `steps`.")
    max_steps: int = Field(50, ge=1, le=150, description="Most denoising steps a request may ask for.")
    default_guidance_scale: float = Field(
        0.0, ge=0.0, le=30.0, description="Classifier-free guidance when omitted (0 for turbo-class models)."
    )
    default_width: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Width when omitted.")
    default_height: int = Field(512, ge=8, le=MAX_SIDE, multiple_of=8, description="Height when omitted.")
    max_width: int = Field(1024, ge=8, le=MAX_SIDE, multiple_of=8, description="Largest width allowed.")
    max_height: int = Field(1024, ge=8, le=MAX_SIDE, multiple_of=8, description="Largest height allowed.")
    max_images: int = Field(4, ge=1, le=8, description="Most images (`n`) one request may ask for.")
    illustration_prompt: str = Field(
        "{title}. {summary}",
        max_length=1000,
        description="Prompt for illustrating a text (content pipeline); `{title}`, `{summary}` (its first "
        "sentence) and `{style}` are filled in.",
    )
    illustration_prompt_chars: int = Field(
        300, ge=20, le=MAX_PROMPT_CHARS, description="Illustration prompts are cut at a word boundary here."
    )
    health_probe: bool = Field(True, description="Health checks run one tiny denoising step.")
    batching: BatchingConfig = Field(
        default_factory=lambda: BatchingConfig(max_batch_size=4),
        description="Dynamic batching of renders with the same size, steps and guidance; changeable in place.",
    )


class ImageOptions(StrictModel):
    """How to render; everything but the prompt. Omitted fields default from the service config."""

    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    width: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="A multiple of 8 (the VAE's step).")
    height: int | None = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="A multiple of 8.")
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: int = Field(1, ge=1, le=8)


class ImageRequest(ImageOptions):
    model: str | None = Field(None, max_length=256, description="Model asked for; must be the one served.")
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


class ImageResult(StrictModel):
    images: list[bytes] = Field(description="PNG files.")
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    model: str


class ImageGenerator:
    """Loads a text-to-image pipeline through ``AutoPipelineForText2Image.from_pretrained`` and renders PNGs."""

    def __init__(self, config: ImageConfig, pipeline: Any = None) -> None:
        self.config = config
        self.placement = resolve_placement(config.device)
        self.dtype = resolve_dtype(config.dtype, self.placement.device)
        # Pipelines keep scheduler state per call: one generation at a time per replica.
        self._lock = threading.Lock()
        if pipeline is None:
            from diffusers import AutoPipelineForText2Image

            pipeline = AutoPipelineForText2Image.from_pretrained(
                resolve_model_source(config.model), dtype=self.dtype, variant=config.weights_variant
            )
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(self.placement.device)

    def apply_config(self, config: ImageConfig) -> None:
        self.config = config

    def close(self) -> None:
        """Nothing runs in the background."""

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "pipeline": type(self.pipeline).__name__,
            "gpu_memory_bytes": memory_bytes(self.placement.device),
        }

    def check_health(self) -> None:
        if self.config.health_probe:
            self.generate(ImageRequest(prompt="ok", steps=1, width=64, height=64, seed=0))

    def prepare(self, request: ImageRequest) -> ImageJob:
        """Validate against the model and config; fill defaults and the seed: everything before rendering."""
        cfg = self.config
        cfg.check_model(request.model)
        steps = request.steps or cfg.default_steps
        width = request.width or cfg.default_width
        height = request.height or cfg.default_height
        guidance = cfg.default_guidance_scale if request.guidance_scale is None else request.guidance_scale
        for name, value, limit in (
            ("steps", steps, cfg.max_steps),
            ("width", width, cfg.max_width),
            ("height", height, cfg.max_height),
            ("n", request.n, cfg.max_images),
        ):
            if value > limit:
                raise InvalidRequest.for_field(name, f"must be at most {limit} for this model")
        return ImageJob(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt if guidance > 1.0 else None,
            steps=steps,
            guidance=guidance,
            width=width,
            height=height,
            n=request.n,
            seed=secrets.randbits(31) if request.seed is None else request.seed,
        )

    def generate(self, request: ImageRequest) -> ImageResult:
        return self.render([self.prepare(request)])[0]

    def render(self, jobs: list[ImageJob]) -> list[ImageResult]:
        """Render a batch: jobs with the same size, steps and guidance run as one pipeline call.

        Every image has its own CPU generator (image ``i`` of a job seeded ``s`` uses ``s + i``), so a seed
        gives the same pixels whatever the device and whatever the job is batched with.
        """
        import torch

        groups: dict[tuple[Any, ...], list[int]] = {}
        for n, job in enumerate(jobs):
            groups.setdefault(job.group_key(), []).append(n)
        images: dict[int, list[Any]] = {}
        for members in groups.values():
            group = [jobs[n] for n in members]
            first = group[0]
            prompts = [job.prompt for job in group for _ in range(job.n)]
            negatives = [job.negative_prompt or "" for job in group for _ in range(job.n)]
            generators = [
                torch.Generator(device="cpu").manual_seed(job.seed + i) for job in group for i in range(job.n)
            ]
            with self._lock, torch.inference_mode():
                output = self.pipeline(
                    prompt=prompts,
                    negative_prompt=negatives if first.negative_prompt is not None else None,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    width=first.width,
                    height=first.height,
                    generator=generators,
                    output_type="pil",
                )
            it = iter(output.images)
            for n, job in zip(members, group, strict=True):
                images[n] = [next(it) for _ in range(job.n)]
        return [
            ImageResult(
                images=[_png(img) for img in images[n]],
                prompt=job.prompt,
                seed=job.seed,
                width=job.width,
                height=job.height,
                steps=job.steps,
                model=self.config.name,
            )
            for n, job in enumerate(jobs)
        ]


@dataclass(frozen=True)
class ImageJob:
    """A validated image request with every default filled in."""

    prompt: str
    negative_prompt: str | None
    steps: int
    guidance: float
    width: int
    height: int
    n: int
    seed: int

    def group_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys share one pipeline call (guided jobs with and without a negative prompt differ)."""
        return (self.steps, self.guidance, self.width, self.height, self.negative_prompt is not None)


def illustration_prompt(config: ImageConfig, narrative: Narrative, style: str | None = None) -> str:
    """The image prompt for a titled text: the image service knows how long a prompt its model takes."""
    summary = re.split(r"(?<=[.!?])\s", narrative.body.strip(), maxsplit=1)[0]
    prompt = config.illustration_prompt.format(title=narrative.title, summary=summary, style=style or "")
    prompt = " ".join(prompt.split())
    if style and "{style}" not in config.illustration_prompt:
        prompt = f"{prompt}, {style}"
    if len(prompt) > config.illustration_prompt_chars:
        cut = prompt.rfind(" ", 0, config.illustration_prompt_chars)
        prompt = prompt[: cut if cut > 0 else config.illustration_prompt_chars]
    return prompt or narrative.title or "an illustration"


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@serve.deployment(name="image")
class ImageDeployment(BatchedMethods, ModelReplica[ImageConfig, ImageGenerator]):
    service: ClassVar[str] = "image"
    config_cls = ImageConfig
    reload_fields = frozenset({"model", "device", "dtype", "weights_variant"})
    batched_methods = ("_render_batch",)

    def load_model(self, config: ImageConfig) -> ImageGenerator:
        return ImageGenerator(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, ImageResult):
            telemetry.count("content_studio_images_generated", len(result.images), model=result.model)
            telemetry.observe("content_studio_image_seconds", seconds, model=result.model)

    def batch_runner(self, model: ImageGenerator) -> Callable[..., list[ImageResult]]:
        return lambda jobs, *_: model.render(jobs)  # images have no per-row callbacks

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _render_batch(self, jobs: list[ImageJob]) -> list[ImageResult]:
        return await self.coalescer_for(self.model).submit(jobs)

    async def _render(self, request: ImageRequest) -> ImageResult:
        return await self.run_one(self.model.prepare(request), self._render_batch)

    async def generate(self, request: ImageRequest) -> ImageResult:
        return await self.measure("generate", (request,), lambda: self._render(request))

    async def illustrate(self, narrative: Narrative, options: ImageOptions, style: str | None = None) -> ImageResult:
        """An image for a titled text (the content pipeline passes the text service's response straight in)."""
        prompt = illustration_prompt(self.model.config, narrative, style)
        request = ImageRequest(prompt=prompt, **options.model_dump())
        return await self.measure("generate", (request,), lambda: self._render(request))
