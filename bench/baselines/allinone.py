"""The all-in-one baseline: one FastAPI + uvicorn process that loads the same four models and runs the same
content pipeline in sequence (article, then image, then audio, then recommendations), as a monolith would.

It uses the services' own engine classes with the user_configs of the same Serve config, so the models,
defaults and limits are identical; only the serving architecture differs.

    python -m bench.baselines.allinone --config configs/local.yaml --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from pydantic import Field

from deployments.common import StrictModel


class ContentIn(StrictModel):
    topic: str = Field(min_length=1, max_length=500)
    user_id: str | None = None
    seed: int | None = None


class CompletionIn(StrictModel):
    prompt: str
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0
    model: str | None = None
    stream: bool = False


def service_configs(path: Path) -> dict[str, dict[str, Any]]:
    app = yaml.safe_load(Path(path).read_text())["applications"][0]
    return {d["name"]: d.get("user_config", {}) for d in app["deployments"]}


def build(config_path: Path, data_dir: Path) -> FastAPI:
    from deployments.image import ImageConfig, ImageGenerator, ImageRequest, illustration_prompt
    from deployments.recommend import RecommendConfig, Recommender, RecommendRequest
    from deployments.text import ArticleRequest, TextConfig, TextRequest, TextService
    from deployments.voice import VoiceConfig, VoiceRequest, VoiceSynthesizer, narration_text

    configs = service_configs(config_path)
    text = TextService(TextConfig.model_validate(configs["text"]))
    image = ImageGenerator(ImageConfig.model_validate(configs["image"]))
    voice = VoiceSynthesizer(VoiceConfig.model_validate(configs["voice"]))
    recommend_cfg = {**configs["recommend"], "store_url": f"sqlite:///{data_dir}/recommend.db"}
    recommend_cfg["trained_dir"] = str(data_dir / "recommend-models")
    recommender = Recommender(RecommendConfig.model_validate(recommend_cfg))
    assets = data_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="all-in-one baseline")
    lock = asyncio.Lock()  # one pipeline at a time through the shared models, as a simple monolith runs

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/content")
    async def content(body: ContentIn) -> dict[str, Any]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        async with lock:
            article = await text.write_article(ArticleRequest(topic=body.topic, seed=body.seed))
            timings["article"] = time.perf_counter() - started
            prompt = illustration_prompt(image.config, article)
            picture = await asyncio.to_thread(image.generate, ImageRequest(prompt=prompt, seed=body.seed))
            timings["image"] = time.perf_counter() - started
            narration = VoiceRequest(input=narration_text(article, voice.config.max_input_chars), seed=body.seed)
            speech = await asyncio.to_thread(voice.synthesize, narration)
            timings["audio"] = time.perf_counter() - started
            recs = await asyncio.to_thread(
                recommender.recommend, RecommendRequest(user_id=body.user_id or "anonymous", k=5)
            )
            timings["recommendations"] = time.perf_counter() - started
        content_id = "c" + uuid.uuid4().hex
        (assets / f"{content_id}.png").write_bytes(picture.images[0])
        (assets / f"{content_id}.wav").write_bytes(speech.audio)
        return {
            "id": content_id,
            "status": "complete",
            "article": {"title": article.title, "body": article.body},
            "recommendations": [r.model_dump() for r in recs.items],
            "timings_s": timings,
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionIn) -> dict[str, Any]:
        request = TextRequest(
            prompt=body.prompt, max_tokens=body.max_tokens, min_tokens=body.min_tokens, temperature=body.temperature
        )
        result = await text.generate(text.prepare(request))
        return {"choices": [{"text": result.text}], "usage": {"completion_tokens": result.completion_tokens}}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--data", type=Path, default=None, help="where assets and the store go (default: temp)")
    args = parser.parse_args()
    import uvicorn

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = args.data or Path(tempfile.mkdtemp(prefix="allinone-"))
    uvicorn.run(build(args.config, data), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
