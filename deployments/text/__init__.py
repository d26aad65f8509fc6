"""Text service: a Hugging Face ``transformers`` causal LM on a continuous-batching engine.

- ``config``: the service's ``user_config`` (``TextConfig``) and its engine's (KV cache, queue).
- ``schemas``: ``TextRequest`` / ``TextResult`` and the stream items; ``articles``: the pipeline's articles.
- ``service``: ``TextService``, the plain class: generating and assembling results (choices, logprobs, tools);
  ``preparation``: its first half, from a request to what the engine takes (prompts, validation, sampling).
- ``engine``: the seam to a generation engine; ``transformers_engine``: continuous batching over transformers'
  paged KV cache; ``admission``: which sequences run, wait or are refused; ``sampling``: the per-request sampling
  step; ``structured``: grammars; ``tokens``: text out.
- ``deployment``: the Serve deployment.
"""

from deployments.text.articles import Article, ArticleDelta, ArticleRequest
from deployments.text.config import MAX_TOKENS_BOUND, ArticleLength, TextConfig
from deployments.text.deployment import TextDeployment
from deployments.text.schemas import (
    MAX_PROMPT_CHARS,
    Choice,
    ChoiceDelta,
    StreamStart,
    TextRequest,
    TextResult,
    coalesce,
)
from deployments.text.service import TextService

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_TOKENS_BOUND",
    "Article",
    "ArticleDelta",
    "ArticleLength",
    "ArticleRequest",
    "Choice",
    "ChoiceDelta",
    "StreamStart",
    "TextConfig",
    "TextDeployment",
    "TextRequest",
    "TextResult",
    "TextService",
    "coalesce",
]
