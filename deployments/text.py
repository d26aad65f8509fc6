"""Text service: a Hugging Face ``transformers`` causal LM that writes articles and descriptions."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from ray import serve

from deployments.common import (
    RequestError,
    ServiceConfig,
    StrictModel,
    memory_bytes,
    resolve_dtype,
    resolve_model_source,
    resolve_placement,
)
from deployments.replica import ModelReplica

MAX_PROMPT_CHARS = 32_000
MAX_TOKENS_BOUND = 4096  # a hard schema bound; the model's context and the config may allow less


# --- config -----------------------------------------------------------------------------------------------
class TextConfig(ServiceConfig):
    """Configuration of the text service (its deployment's ``user_config``)."""

    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of `model`.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub; off unless you trust it.")
    default_max_tokens: int = Field(128, ge=1, le=MAX_TOKENS_BOUND, description="`max_tokens` when omitted.")
    max_tokens_limit: int = Field(
        1024, ge=1, le=MAX_TOKENS_BOUND, description="Largest `max_tokens` a request may ask for."
    )
    default_temperature: float = Field(0.7, ge=0.0, le=2.0, description="`temperature` when omitted.")
    default_top_p: float = Field(0.95, gt=0.0, le=1.0, description="`top_p` when omitted.")
    max_context_tokens: int | None = Field(
        None, ge=8, description="Prompt + completion token budget; defaults to the model's own context length."
    )
    health_probe: bool = Field(
        True, description="Health checks generate one token, proving the model answers, not only that it lives."
    )


# --- schemas ----------------------------------------------------------------------------------------------
class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class TextRequest(StrictModel):
    """One generation: either a plain ``prompt`` or chat ``messages``; sampling fields default from config."""

    model: str | None = Field(None, max_length=256, description="Model asked for; must be the one served.")
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=4)

    @model_validator(mode="after")
    def _one_input(self) -> TextRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        return self


class TextResult(StrictModel):
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    model: str


# --- engine -----------------------------------------------------------------------------------------------
class TextGenerator:
    """Loads a causal LM and its tokenizer through ``from_pretrained`` and generates completions."""

    def __init__(self, config: TextConfig, model: Any = None, tokenizer: Any = None) -> None:
        self.config = config
        self.placement = resolve_placement(config.device)
        self._lock = threading.Lock()  # generation uses torch's global RNG for seeding
        if model is None or tokenizer is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            source = resolve_model_source(config.model)
            tokenizer = AutoTokenizer.from_pretrained(
                source, revision=config.revision, trust_remote_code=config.trust_remote_code
            )
            model = AutoModelForCausalLM.from_pretrained(
                source,
                revision=config.revision,
                trust_remote_code=config.trust_remote_code,
                dtype=resolve_dtype(config.dtype, self.placement.device),
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only models continue from the right
        self.tokenizer = tokenizer
        self.model = model.to(self.placement.device).eval()
        self.context_length = self._context_length()

    def _context_length(self) -> int:
        if self.config.max_context_tokens:
            return self.config.max_context_tokens
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(min(self.tokenizer.model_max_length, 4096))

    def apply_config(self, config: TextConfig) -> None:
        self.config = config
        self.context_length = self._context_length()

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "gpu_memory_bytes": memory_bytes(self.placement.device),
        }

    def check_health(self) -> None:
        if self.config.health_probe:
            self.generate(TextRequest(prompt="ok", max_tokens=1, temperature=0.0))

    # --- generation ---------------------------------------------------------------------------------------
    def render_prompt(self, request: TextRequest) -> str:
        """The text the model sees: the prompt, or the chat through the tokenizer's template when it has one."""
        if request.prompt is not None:
            return request.prompt
        messages = [m.model_dump() for m in request.messages or []]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def generate(self, request: TextRequest) -> TextResult:
        import torch

        cfg = self.config
        cfg.check_model(request.model)
        max_tokens = request.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise RequestError("max_tokens", f"must be at most {cfg.max_tokens_limit} for this model")
        temperature = cfg.default_temperature if request.temperature is None else request.temperature
        top_p = cfg.default_top_p if request.top_p is None else request.top_p
        text = self.render_prompt(request)
        encoded = self.tokenizer(text, return_tensors="pt")
        prompt_tokens = int(encoded["input_ids"].shape[1])
        field = "prompt" if request.prompt is not None else "messages"
        if prompt_tokens == 0:
            raise RequestError(field, "encodes to no tokens")
        if prompt_tokens >= self.context_length:
            raise RequestError(field, f"is {prompt_tokens} tokens; the model's context is {self.context_length}")
        if prompt_tokens + max_tokens > self.context_length:
            raise RequestError(
                "max_tokens",
                f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                f"of {self.context_length} tokens",
            )
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=temperature, top_p=top_p, top_k=0)
        if request.stop:
            sampling["stopping_criteria"] = [_stop_on_text_class()(self.tokenizer, request.stop, prompt_tokens)]
        encoded = {k: v.to(self.placement.device) for k, v in encoded.items()}
        with self._lock, torch.inference_mode():
            if request.seed is not None:
                torch.manual_seed(request.seed)
            output = self.model.generate(
                **encoded,
                max_new_tokens=max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **sampling,
            )
        new_tokens = output[0, prompt_tokens:].tolist()
        hit_eos = bool(new_tokens) and new_tokens[-1] == self.tokenizer.eos_token_id
        if hit_eos:
            new_tokens = new_tokens[:-1]
        completion = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        finish = "stop" if hit_eos else "length"
        for stop in request.stop:
            cut = completion.find(stop)
            if cut != -1:
                completion, finish = completion[:cut], "stop"
        return TextResult(
            text=completion,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(new_tokens) + int(hit_eos),
            model=cfg.name,
        )


@functools.cache
def _stop_on_text_class() -> type:
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        """Stops once the *generated* text holds a stop sequence (OpenAI semantics: the prompt does not count,
        unlike transformers' ``stop_strings``, which also matches across the prompt's tail)."""

        def __init__(self, tokenizer: Any, stops: list[str], prompt_tokens: int) -> None:
            self.tokenizer, self.stops, self.prompt_tokens = tokenizer, stops, prompt_tokens

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            done = [
                any(s in self.tokenizer.decode(row[self.prompt_tokens :], skip_special_tokens=True) for s in self.stops)
                for row in input_ids
            ]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnText


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="text")
class TextDeployment(ModelReplica[TextConfig, TextGenerator]):
    service: ClassVar[str] = "text"
    config_cls = TextConfig
    reload_fields = frozenset({"model", "device", "dtype", "revision", "trust_remote_code"})

    def build_engine(self, config: TextConfig) -> TextGenerator:
        return TextGenerator(config)

    async def generate(self, request: TextRequest) -> TextResult:
        return await asyncio.to_thread(self.engine.generate, request)
