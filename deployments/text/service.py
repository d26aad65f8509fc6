"""The text service: a Hugging Face causal LM behind a continuous-batching engine.

``TextService`` is the plain class the replica holds. It loads the tokenizer and the weights through
``from_pretrained``, starts a generation engine over them (``engine.kind``; see engine.py for the seam), and turns
``TextRequest``s into engine requests and the engine's tokens back into text: chat templates, validation against
the model (its context, its vocabulary), stop strings and incremental detokenisation, ``n`` choices and
``best_of``, log probabilities, structured output and tool calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.common import RequestError, memory_bytes, resolve_dtype, resolve_model_source, resolve_placement
from deployments.telemetry import telemetry
from deployments.text.articles import ARTICLE_SCHEMA, Article, ArticleDelta, ArticleFields, ArticleRequest
from deployments.text.config import EngineConfig, TextConfig
from deployments.text.engine import EngineRequest, GenerationEngine, SamplingParams, TokenChoice
from deployments.text.schemas import (
    ChatMessage,
    Choice,
    ChoiceDelta,
    FinishReason,
    ResponseFormat,
    StreamStart,
    TextRequest,
    TextResult,
    Tokenized,
    TokenLogprob,
    ToolCall,
    ToolCallFunction,
    TopLogprob,
)
from deployments.text.structured import ANY_JSON_OBJECT, json_schema_grammar, tool_call_schema
from deployments.text.tokens import IncrementalDetokenizer, StopStrings, token_bytes

ENGINE_RESTART_WAIT_S = 300.0
HERMES_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def build_engine(
    config: EngineConfig, model: Any, tokenizer: Any, device: str, context_length: int, label: str = "text"
) -> Any:
    """The generation engine named by ``config.kind`` (one kind today; the seam takes more)."""
    if config.kind == "transformers":
        from deployments.text.transformers_engine import TransformersEngine

        return TransformersEngine(model, tokenizer, config, device, context_length, label)
    raise ValueError(f"unknown text engine {config.kind!r}")  # pragma: no cover - the config's Literal guards it


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


@dataclass
class _Outcome:
    """One candidate's generated text and tokens."""

    text: str
    finish: FinishReason
    tokens: list[TokenChoice]
    count: int

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens)


class TextService:
    """Loads a causal LM and its tokenizer, runs a generation engine over them, answers ``TextRequest``s."""

    def __init__(
        self, config: TextConfig, model: Any = None, tokenizer: Any = None, engine: GenerationEngine | None = None
    ) -> None:
        self.config = config
        self.placement = resolve_placement(config.device)
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
        self.tokenizer = tokenizer
        self.lm = model.to(self.placement.device).eval()  # the weights (the engine runs them)
        self.vocab_size = int(self.lm.get_output_embeddings().weight.shape[0])
        self.eos_ids = {tokenizer.eos_token_id} if isinstance(tokenizer.eos_token_id, int) else set()
        self._ready = threading.Event()
        self.engine: GenerationEngine = engine or build_engine(
            config.engine, self.lm, tokenizer, self.placement.device, self._model_context(), config.name
        )
        self.engine.start()
        self._ready.set()

    # --- lifecycle ----------------------------------------------------------------------------------------
    def _model_context(self) -> int:
        if self.config.max_context_tokens:
            return self.config.max_context_tokens
        cfg = self.lm.config
        for attr in ("max_position_embeddings", "n_positions", "seq_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(min(self.tokenizer.model_max_length, 4096))

    @property
    def context_length(self) -> int:
        return min(self._model_context(), self.engine.context_length)

    def apply_config(self, config: TextConfig) -> None:
        """New defaults and limits in place; a new engine config restarts the engine on the same weights: the
        running batch drains, then the new engine starts (requests arriving meanwhile wait for it)."""
        engine_changed = config.engine != self.config.engine
        self.config = config
        if engine_changed:
            self._ready.clear()
            try:
                self.engine.close(wait=True)
                self.engine = build_engine(
                    config.engine, self.lm, self.tokenizer, self.placement.device, self._model_context(), config.name
                )
                self.engine.start()
            finally:
                self._ready.set()

    def close(self) -> None:
        self.engine.close()  # drains in the background: requests in flight finish on this model

    async def _engine(self) -> GenerationEngine:
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait, ENGINE_RESTART_WAIT_S)
        return self.engine

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": str(self.lm.dtype).removeprefix("torch."),
            "context_length": self.context_length,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "gpu_memory_bytes": memory_bytes(self.placement.device),
            **self.engine.describe(),
        }

    async def check_health(self) -> None:
        """One greedy token through the running engine (never a plain ``generate`` beside the live batch)."""
        if self.config.health_probe:
            await self.generate(self.prepare(TextRequest(prompt="ok", max_tokens=1, temperature=0.0)))

    # --- preparing ----------------------------------------------------------------------------------------
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
            raise RequestError("max_tokens", f"must be at most {cfg.max_tokens_limit} for this model")
        candidates = request.best_of or request.n
        if request.n > cfg.max_choices:
            raise RequestError("n", f"must be at most {cfg.max_choices} for this model")
        if candidates > cfg.max_choices:
            raise RequestError("best_of", f"must be at most {cfg.max_choices} for this model")
        if request.logprobs is not None and request.logprobs > cfg.max_logprobs:
            raise RequestError("logprobs", f"at most {cfg.max_logprobs} alternatives per token")
        if any(t >= self.vocab_size for t in request.logit_bias):
            raise RequestError("logit_bias", f"token ids must be below the vocabulary size {self.vocab_size}")
        tool_mode, tool_name, grammar = self._tools_and_format(request)
        tools = [t.model_dump(exclude_none=True) for t in request.tools or []] if tool_mode == "auto" else None
        prompt_text = self.render_prompt(request, tools)
        if request.prompt_token_ids is not None:
            if any(t < 0 or t >= self.vocab_size for t in request.prompt_token_ids):
                raise RequestError("prompt", f"token ids must be between 0 and {self.vocab_size - 1}")
            prompt_ids = list(request.prompt_token_ids)
        else:
            prompt_ids = self.tokenizer(prompt_text, add_special_tokens=request.prompt is not None)["input_ids"]
        field = "messages" if request.messages is not None else "prompt"
        if not prompt_ids:
            raise RequestError(field, "encodes to no tokens")
        context = self.context_length
        if len(prompt_ids) >= context:
            raise RequestError(field, f"is {len(prompt_ids)} tokens; the model's context is {context}")
        if len(prompt_ids) + max_tokens > context:
            raise RequestError(
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
            raise RequestError("response_format", "cannot be combined with tools the model must call")
        if choice == "auto":
            template = getattr(self.tokenizer, "chat_template", None) or ""
            if self.config.tool_call_parser is None or "tools" not in template:
                raise RequestError(
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
            raise RequestError("tool_choice", f"names no tool of the request: {choice!r}")
        return "named", named["name"], json_schema_grammar(named.get("parameters") or ANY_JSON_OBJECT, "tools")

    @staticmethod
    def _format_grammar(fmt: ResponseFormat) -> str | None:
        if fmt.type == "json_object":
            return json_schema_grammar(ANY_JSON_OBJECT, "response_format")
        if fmt.type == "json_schema":
            return json_schema_grammar(fmt.json_schema or ANY_JSON_OBJECT, "response_format")
        return None

    # --- generating ---------------------------------------------------------------------------------------
    async def generate(self, prepared: Prepared) -> TextResult:
        """Every candidate runs in the continuous batch at once; the ``n`` likeliest are returned."""
        outcomes = await asyncio.gather(*(self._run(prepared, i) for i in range(prepared.candidates)))
        if prepared.candidates > prepared.n:
            outcomes = sorted(outcomes, key=lambda o: -o.cumulative_logprob)[: prepared.n]
        choices = [self._choice(prepared, i, o) for i, o in enumerate(outcomes)]
        return await self._result(prepared, choices)

    async def generate_many(self, prepared: list[Prepared]) -> list[TextResult]:
        """Several prompts of one request (a completion's prompt list): their sequences wait in the engine as one
        request, so a request is admitted or refused whole, and never refused only for its size."""
        group = next((one.group for one in prepared if one.group), None) or uuid.uuid4().hex
        for one in prepared:
            one.group = group
        return list(await asyncio.gather(*(self.generate(one) for one in prepared)))

    async def stream(self, prepared: Prepared) -> AsyncIterator[StreamStart | ChoiceDelta | TextResult]:
        """A ``StreamStart``, then ``ChoiceDelta``s of every choice as they come, then the full ``TextResult``.
        Closing the stream cancels every choice in the engine."""
        if prepared.candidates > prepared.n:
            raise RequestError("best_of", "cannot be larger than `n` when streaming")
        start = StreamStart(
            model=self.config.name,
            prompt_tokens=len(prepared.prompt_ids),
            choices=prepared.n,
            prompt_text=prepared.prompt_text if prepared.echo else None,
            prompt_logprobs=await self._prompt_logprobs(prepared),
        )
        yield start
        queue: asyncio.Queue[ChoiceDelta | BaseException | None] = asyncio.Queue()

        async def one(index: int) -> _Outcome:
            async def on_delta(delta: ChoiceDelta) -> None:
                await queue.put(delta)

            outcome = await self._run(prepared, index, on_delta)
            choice = self._choice(prepared, index, outcome)
            await queue.put(ChoiceDelta(index=index, finish_reason=choice.finish_reason, tool_calls=choice.tool_calls))
            return outcome

        tasks = [asyncio.ensure_future(one(i)) for i in range(prepared.n)]
        gathered = asyncio.gather(*tasks)
        gathered.add_done_callback(lambda f: queue.put_nowait(f.exception() if not f.cancelled() else None))
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
            outcomes = gathered.result()
            choices = [self._choice(prepared, i, o) for i, o in enumerate(outcomes)]
            yield TextResult(
                choices=choices,
                prompt_tokens=len(prepared.prompt_ids),
                completion_tokens=sum(c.completion_tokens for c in choices),
                model=self.config.name,
            )
        finally:
            for task in tasks:
                task.cancel()

    async def _run(
        self, prepared: Prepared, index: int, on_delta: Callable[[ChoiceDelta], Awaitable[None]] | None = None
    ) -> _Outcome:
        """One candidate through the engine: detokenise as tokens arrive, cut at stop strings, report deltas."""
        request_id = f"{prepared.request_id}-{index}"
        params = prepared.params[index]
        engine = await self._engine()
        await engine.submit(
            EngineRequest(request_id, prepared.prompt_ids, params, prepared.group or prepared.request_id)
        )
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopStrings(prepared.stops)
        named = prepared.tool_mode == "named"
        text: list[str] = []
        tokens: list[TokenChoice] = []
        finish: FinishReason = "length"
        stream = engine.stream(request_id)
        started = time.perf_counter()
        first = True
        try:
            async for output in stream:
                if first and output.tokens:
                    first = False
                    telemetry.observe(
                        "content_studio_time_to_first_token_seconds",
                        time.perf_counter() - started,
                        model=self.config.name,
                    )
                fresh = [t for t in output.tokens if t.token_id not in self.eos_ids or params.ignore_eos]
                tokens.extend(fresh)
                piece = stops.push(detokenizer.push([t.token_id for t in fresh]))
                if output.finished and not stops.stopped:
                    piece += stops.push(detokenizer.flush()) + stops.flush()
                text.append(piece)
                if on_delta is not None and (piece or output.tokens):
                    delta = ChoiceDelta(
                        index=index, logprobs=self._logprobs(fresh, prepared.logprobs), tokens=len(output.tokens)
                    )
                    if named:
                        delta.tool_call_arguments = piece
                    else:
                        delta.text = piece
                    await on_delta(delta)
                if stops.stopped:
                    finish = "stop"
                    break
                if output.finished:
                    finish = output.finish_reason or "length"
                    break
        finally:
            await stream.aclose()  # an unfinished request is cancelled in the engine: its KV blocks are freed
        count = len(tokens) + (1 if finish == "stop" and not stops.stopped else 0)
        return _Outcome(text="".join(text), finish=finish, tokens=tokens, count=count)

    def _choice(self, prepared: Prepared, index: int, outcome: _Outcome) -> Choice:
        choice = Choice(
            index=index,
            text=outcome.text,
            finish_reason=outcome.finish,
            completion_tokens=outcome.count,
            logprobs=self._logprobs(outcome.tokens, prepared.logprobs),
        )
        calls = self._tool_calls(prepared, outcome.text)
        if calls:
            remaining = HERMES_CALL.sub("", outcome.text).strip() if prepared.tool_mode == "auto" else ""
            choice = choice.model_copy(update={"tool_calls": calls, "text": remaining, "finish_reason": "tool_calls"})
        return choice

    def _tool_calls(self, prepared: Prepared, text: str) -> list[ToolCall] | None:
        def call(name: str, arguments: Any) -> ToolCall:
            body = arguments if isinstance(arguments, str) else json.dumps(arguments)
            return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=ToolCallFunction(name=name, arguments=body))

        try:
            if prepared.tool_mode == "named" and prepared.tool_name:
                json.loads(text)  # always valid under the grammar, unless the budget ran out first
                return [call(prepared.tool_name, text)]
            if prepared.tool_mode == "required":
                document = json.loads(text)
                return [call(document["name"], document.get("arguments", {}))]
            if prepared.tool_mode == "auto":
                found = [json.loads(m) for m in HERMES_CALL.findall(text)]
                return [call(f["name"], f.get("arguments", {})) for f in found if "name" in f] or None
        except (ValueError, KeyError, TypeError):
            return None
        return None

    async def _result(self, prepared: Prepared, choices: list[Choice]) -> TextResult:
        return TextResult(
            choices=choices,
            prompt_tokens=len(prepared.prompt_ids),
            completion_tokens=sum(c.completion_tokens for c in choices),
            model=self.config.name,
            prompt_text=prepared.prompt_text if prepared.echo else None,
            prompt_logprobs=await self._prompt_logprobs(prepared),
        )

    async def _prompt_logprobs(self, prepared: Prepared) -> list[TokenLogprob] | None:
        if not (prepared.echo and prepared.logprobs is not None):
            return None
        scored = await (await self._engine()).prompt_logprobs(prepared.prompt_ids, prepared.logprobs)
        first = TokenChoice(prepared.prompt_ids[0], 0.0)  # nothing before it: its token, without a logprob
        out = [self._logprob(s or first, prepared.logprobs) for s in scored]
        out[0] = out[0].model_copy(update={"logprob": None, "top": []})
        return out

    def _logprobs(self, tokens: list[TokenChoice], top: int | None) -> list[TokenLogprob] | None:
        if top is None:
            return None
        return [self._logprob(t, top) for t in tokens]

    def _logprob(self, choice: TokenChoice, top: int) -> TokenLogprob:
        def entry(token_id: int, logprob: float) -> TopLogprob:
            raw = token_bytes(self.tokenizer, token_id)
            return TopLogprob(token=_token_text(raw), token_id=token_id, logprob=logprob, bytes=list(raw))

        first = entry(choice.token_id, choice.logprob)
        return TokenLogprob(**first.model_dump(), top=[entry(t, lp) for t, lp in choice.top[:top]])

    # --- articles -----------------------------------------------------------------------------------------
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

    async def write_article(self, request: ArticleRequest) -> Article:
        return Article.parse(await self.generate(self.prepare(self.article_request(request))))

    async def write_article_stream(self, request: ArticleRequest) -> AsyncIterator[ArticleDelta | Article]:
        fields = ArticleFields()
        async for item in self.stream(self.prepare(self.article_request(request))):
            if isinstance(item, ChoiceDelta) and item.text:
                for delta in fields.push(item.text):
                    yield delta
            elif isinstance(item, TextResult):
                yield Article.parse(item)

    # --- tokens -------------------------------------------------------------------------------------------
    def tokenize(
        self, request: TextRequest, add_special_tokens: bool = True, return_token_strs: bool = False
    ) -> Tokenized:
        self.config.check_model(request.model)
        text = self.render_prompt(request)
        ids = self.tokenizer(text, add_special_tokens=add_special_tokens and request.prompt is not None)["input_ids"]
        strs = [_token_text(token_bytes(self.tokenizer, t)) for t in ids] if return_token_strs else None
        return Tokenized(tokens=list(ids), count=len(ids), max_model_len=self.context_length, token_strs=strs)

    def detokenize(self, tokens: list[int], model: str | None = None) -> str:
        self.config.check_model(model)
        if any(t < 0 or t >= self.vocab_size for t in tokens):
            raise RequestError("tokens", f"token ids must be between 0 and {self.vocab_size - 1}")
        return self.tokenizer.decode(tokens, skip_special_tokens=False)


def _with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    from dataclasses import replace

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


def _token_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
