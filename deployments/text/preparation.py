"""Preparing text requests: everything between a ``TextRequest`` and what the engine takes.

The first half of ``TextService`` (service.py holds the second: generating and assembling results): prompts
rendered through the model's chat template, validation against the model and the config (its context, its
vocabulary, the config's limits), tokenising, sampling parameters per candidate, and the grammar of structured
output and tool calls. Kept apart because it is pure: no engine, no event loop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from deployments.errors import InvalidRequest
from deployments.text.articles import ARTICLE_SCHEMA, ArticleRequest
from deployments.text.config import TextConfig
from deployments.text.engine import SamplingParams
from deployments.text.schemas import ChatMessage, ResponseFormat, TextRequest, Tokenized
from deployments.text.structured import (
    ANY_JSON_OBJECT,
    choice_grammar,
    json_schema_grammar,
    lark_grammar,
    regex_grammar,
    tool_call_schema,
)
from deployments.text.tokens import token_bytes, token_text


@dataclass
class Prepared:
    """A validated, tokenised request: everything the engine needs, per choice."""

    prompt_ids: list[int]
    prompt_text: str
    params: list[SamplingParams]  # one per candidate (best_of, or n)
    n: int
    stops: list[str]
    logprobs: int | None
    echo: bool
    tool_mode: str = "none"  # none | named | required | auto
    tool_name: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    group: str | None = None  # the request its candidates wait in the engine as (None: this one alone)

    @property
    def candidates(self) -> int:
        return len(self.params)


class RequestPreparation:
    """Prepares requests for the model a ``TextService`` holds: its ``config``, ``tokenizer``, ``vocab_size`` and
    ``context_length``."""

    config: TextConfig
    tokenizer: Any
    vocab_size: int
    context_length: int

    def render_prompt(self, request: TextRequest, tools: list[dict[str, Any]] | None = None) -> str:
        """The text the model sees: the prompt, or the chat through the tokenizer's template when it has one."""
        if request.prompt is not None:
            return request.prompt
        if request.prompt_token_ids is not None:
            return self.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
        messages = [_template_message(m) for m in request.messages or []]
        if getattr(self.tokenizer, "chat_template", None):
            kwargs: dict[str, Any] = {"tools": tools} if tools else {}
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def prepare(self, request: TextRequest) -> Prepared:
        """Validate against the model and config, and tokenise: everything before the engine runs."""
        cfg = self.config
        cfg.check_model(request.model)
        max_tokens = request.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise InvalidRequest.for_field("max_tokens", f"must be at most {cfg.max_tokens_limit} for this model")
        candidates = request.best_of or request.n
        if request.n > cfg.max_choices:
            raise InvalidRequest.for_field("n", f"must be at most {cfg.max_choices} for this model")
        if candidates > cfg.max_choices:
            raise InvalidRequest.for_field("best_of", f"must be at most {cfg.max_choices} for this model")
        if request.logprobs is not None and request.logprobs > cfg.max_logprobs:
            raise InvalidRequest.for_field("logprobs", f"at most {cfg.max_logprobs} alternatives per token")
        if any(t >= self.vocab_size for t in request.logit_bias):
            raise InvalidRequest.for_field(
                "logit_bias", f"token ids must be below the vocabulary size {self.vocab_size}"
            )
        tool_mode, tool_name, grammar = self._tools_and_format(request)
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []] if tool_mode == "auto" else None
        prompt_text = self.render_prompt(request, tools)
        if request.prompt_token_ids is not None:
            if any(t < 0 or t >= self.vocab_size for t in request.prompt_token_ids):
                raise InvalidRequest.for_field("prompt", f"token ids must be between 0 and {self.vocab_size - 1}")
            prompt_ids = list(request.prompt_token_ids)
        else:
            prompt_ids = self.tokenizer(prompt_text, add_special_tokens=request.prompt is not None)["input_ids"]
        field = "messages" if request.messages is not None else "prompt"
        if not prompt_ids:
            raise InvalidRequest.for_field(field, "encodes to no tokens")
        context = self.context_length
        if len(prompt_ids) >= context:
            raise InvalidRequest.for_field(field, f"is {len(prompt_ids)} tokens; the model's context is {context}")
        if len(prompt_ids) + max_tokens > context:
            raise InvalidRequest.for_field(
                "max_tokens",
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                f"of {context} tokens",
            )
        temperature = cfg.default_temperature if request.temperature is None else request.temperature
        top_p = cfg.default_top_p if request.top_p is None else request.top_p
        wants_scores = request.logprobs is not None or candidates > request.n
        base = SamplingParams(
            max_tokens=max_tokens,
            min_tokens=min(request.min_tokens, max_tokens),
            temperature=temperature,
            top_p=top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            repetition_penalty=request.repetition_penalty,
            logit_bias=tuple(sorted(request.logit_bias.items())),
            ignore_eos=request.ignore_eos,
            logprobs=(request.logprobs or 0) if wants_scores else None,
            grammar=grammar,
            closing_reserve=cfg.structured_closing_reserve,
        )
        params = [_with_seed(base, None if request.seed is None else request.seed + i) for i in range(candidates)]
        return Prepared(
            prompt_ids=list(prompt_ids),
            prompt_text=prompt_text,
            params=params,
            n=request.n,
            stops=list(request.stop),
            logprobs=request.logprobs,
            echo=request.echo,
            tool_mode=tool_mode,
            tool_name=tool_name,
            group=request.group,
        )

    def _tools_and_format(self, request: TextRequest) -> tuple[str, str | None, str | None]:
        """The tool mode, the forced function's name, and the grammar (structured output or tool arguments)."""
        tools = request.tools or []
        choice = request.tool_choice or ("auto" if tools else "none")
        fmt = request.response_format or ResponseFormat()
        if not tools or choice == "none":
            return "none", None, self._format_grammar(fmt)
        if fmt.type != "text":
            raise InvalidRequest.for_field("response_format", "cannot be combined with tools the model must call")
        if choice == "auto":
            template = getattr(self.tokenizer, "chat_template", None) or ""
            if self.config.tool_call_parser is None or "tools" not in template:
                raise InvalidRequest.for_field(
                    "tool_choice",
                    "`auto` needs a model whose chat template takes tools and a `tool_call_parser` in the text "
                    "service config; name a function or use `required` to have its arguments generated",
                )
            return "auto", None, None
        specs = [t.model_dump(exclude_none=True) for t in tools]
        if choice == "required":
            return "required", None, json_schema_grammar(tool_call_schema(specs), "tools")
        named = next((t for t in specs if t["name"] == choice), None)
        if named is None:
            raise InvalidRequest.for_field("tool_choice", f"names no tool of the request: {choice!r}")
        return "named", named["name"], json_schema_grammar(named.get("parameters") or ANY_JSON_OBJECT, "tools")

    @staticmethod
    def _format_grammar(fmt: ResponseFormat) -> str | None:
        if fmt.type == "json_object":
            return json_schema_grammar(ANY_JSON_OBJECT, "response_format")
        if fmt.type == "json_schema":
            return json_schema_grammar(fmt.json_schema or ANY_JSON_OBJECT, "response_format")
        if fmt.type == "regex":
            return regex_grammar(fmt.regex or "", "response_format")
        if fmt.type == "choice":
            return choice_grammar(fmt.choices or [], "response_format")
        if fmt.type == "grammar":
            return lark_grammar(fmt.grammar or "", "response_format")
        return None

    def article_request(self, request: ArticleRequest) -> TextRequest:
        cfg = self.config
        style = request.style or "engaging"
        user = cfg.article_prompt.format(topic=request.topic, style=style, length=request.length)
        return TextRequest(
            model=request.model,
            messages=[
                ChatMessage(role="system", content=cfg.article_system_prompt),
                ChatMessage(role="user", content=user),
            ],
            max_tokens=min(cfg.article_tokens[request.length], cfg.max_tokens_limit),
            seed=request.seed,
            response_format=ResponseFormat(type="json_schema", json_schema=ARTICLE_SCHEMA),
        )

    # --- tokens -------------------------------------------------------------------------------------------
    def tokenize(
        self, request: TextRequest, add_special_tokens: bool = True, return_token_strs: bool = False
    ) -> Tokenized:
        self.config.check_model(request.model)
        text = self.render_prompt(request)
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens and request.prompt is not None)["input_ids"]
        strs = [token_text(token_bytes(self.tokenizer, t)) for t in ids] if return_token_strs else None
        return Tokenized(tokens=list(ids), count=len(ids), max_model_len=self.context_length, token_strs=strs)

    def detokenize(self, tokens: list[int], model: str | None = None) -> str:
        self.config.check_model(model)
        if any(t < 0 or t >= self.vocab_size for t in tokens):
            raise InvalidRequest.for_field("tokens", f"token ids must be between 0 and {self.vocab_size - 1}")
        return self.tokenizer.decode(tokens, skip_special_tokens=False)


def _with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    return replace(params, seed=seed)


def _template_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out
