"""The text service as a Ray Serve deployment: thin wiring over ``TextService``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from ray import serve

from deployments.replica import ModelReplica
from deployments.telemetry import telemetry
from deployments.text.articles import Article, ArticleDelta, ArticleRequest
from deployments.text.config import TextConfig
from deployments.text.schemas import ChoiceDelta, StreamStart, TextRequest, TextResult, Tokenized
from deployments.text.service import TextService


@serve.deployment(name="text")
class TextDeployment(ModelReplica[TextConfig, TextService]):
    """Generations run on the replica's continuous-batching engine; streams are measured like plain calls."""

    service: ClassVar[str] = "text"
    config_cls = TextConfig
    reload_fields = frozenset({"model", "device", "dtype", "revision", "trust_remote_code"})
    paces_own_streams = True

    def load_model(self, config: TextConfig) -> TextService:
        return TextService(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        results = result if isinstance(result, list) else [result]
        for one in results:
            if isinstance(one, TextResult | Article) and seconds > 0:
                telemetry.count("content_studio_tokens_generated", one.completion_tokens, model=one.model)
                telemetry.observe("content_studio_tokens_per_second", one.completion_tokens / seconds, model=one.model)

    async def generate(self, request: TextRequest) -> TextResult:
        model = self.model
        return await self.measure("generate", (request,), lambda: model.generate(model.prepare(request)))

    async def generate_many(self, requests: list[TextRequest]) -> list[TextResult]:
        """Every prompt of one completion request in one call: one place at the edge, in Serve's queue and in
        the engine's (every prompt is validated before any runs, so a bad one fails the request at once)."""
        model = self.model

        async def work() -> list[TextResult]:
            return await model.generate_many([model.prepare(r) for r in requests])

        return await self.measure("generate_many", (requests,), work)

    async def generate_stream(self, request: TextRequest) -> AsyncIterator[StreamStart | ChoiceDelta | TextResult]:
        """A ``StreamStart`` once the request is accepted (a bad request fails before anything streams), then
        ``ChoiceDelta``s as tokens are generated, then the full result; closing the stream stops generation."""
        model = self.model

        def items() -> AsyncIterator[StreamStart | ChoiceDelta | TextResult]:
            return model.stream(model.prepare(request))

        async for item in self.measure_stream("generate_stream", (request,), items, TextResult):
            yield item

    async def write_article(self, request: ArticleRequest) -> Article:
        return await self.measure("write_article", (request,), lambda: self.model.write_article(request))

    async def write_article_stream(self, request: ArticleRequest) -> AsyncIterator[ArticleDelta | Article]:
        model = self.model
        async for item in self.measure_stream(
            "write_article_stream", (request,), lambda: model.write_article_stream(request), Article
        ):
            yield item

    async def tokenize(
        self, request: TextRequest, add_special_tokens: bool = True, return_token_strs: bool = False
    ) -> Tokenized:
        return self.model.tokenize(request, add_special_tokens, return_token_strs)

    async def detokenize(self, tokens: list[int], model: str | None = None) -> str:
        return self.model.detokenize(tokens, model)
