"""Text service: a Hugging Face ``transformers`` causal LM on a continuous-batching engine.

- ``config``: the service's ``user_config`` (``TextConfig``) and its engine's (KV cache, queue).
- ``schemas``: ``TextRequest`` / ``TextResult`` and the stream items; ``articles``: the pipeline's articles.
- ``service``: ``TextService``, the plain class (prompts, validation, choices, logprobs, tools).
- ``engine``: the seam to a generation engine; ``transformers_engine``: continuous batching over transformers'
  paged KV cache; ``sampling``: the per-request sampling step; ``structured``: grammars; ``tokens``: text out.
- ``deployment``: the Serve deployment.
"""

from deployments.text.articles import Article, ArticleDelta, ArticleRequest
from deployments.text.config import MAX_TOKENS_BOUND, ArticleLength, EngineConfig, KVCacheConfig, TextConfig
from deployments.text.deployment import TextDeployment
from deployments.text.schemas import (
    MAX_PROMPT_CHARS,
    ChatMessage,
    Choice,
    ChoiceDelta,
    StreamStart,
    TextRequest,
    TextResult,
    Tokenized,
)
from deployments.text.service import TextService

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_TOKENS_BOUND",
    "Article",
    "ArticleDelta",
    "ArticleLength",
    "ArticleRequest",
    "ChatMessage",
    "Choice",
    "ChoiceDelta",
    "EngineConfig",
    "KVCacheConfig",
    "StreamStart",
    "TextConfig",
    "TextDeployment",
    "TextRequest",
    "TextResult",
    "TextService",
    "Tokenized",
]
