"""vLLM's ``/tokenize`` (a prompt, or chat messages through the model's chat template) and ``/detokenize``."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from deployments.text import MAX_PROMPT_CHARS, TextRequest
from edge.openai.chat import ChatMessageIn
from edge.openai.protocol import OpenAIModel


class TokenizePromptRequest(OpenAIModel):
    """vLLM's ``/tokenize`` for a prompt."""

    model: str | None = Field(None, max_length=256)
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    add_special_tokens: bool = True
    return_token_strs: bool = False

    def to_service(self) -> TextRequest:
        return TextRequest(model=self.model, prompt=self.prompt or " ")


class TokenizeChatRequest(OpenAIModel):
    """vLLM's ``/tokenize`` for chat messages, through the model's chat template."""

    model: str | None = Field(None, max_length=256)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    add_generation_prompt: bool | None = Field(None, description="Accepted; chats always get one.")
    add_special_tokens: bool = False
    return_token_strs: bool = False

    def to_service(self) -> TextRequest:
        return TextRequest(model=self.model, messages=[m.to_service(n) for n, m in enumerate(self.messages)])


TokenizeRequest = TokenizePromptRequest | TokenizeChatRequest


class TokenizeResponse(OpenAIModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = Field(None, max_length=256)
    tokens: list[Annotated[int, Field(ge=0, le=10_000_000)]] = Field(max_length=32_000)


class DetokenizeResponse(OpenAIModel):
    prompt: str
