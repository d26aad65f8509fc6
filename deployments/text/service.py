"""The text service: a Hugging Face causal LM behind a continuous-batching engine.

``TextService`` is the plain class the replica holds. It loads the tokenizer and the weights through
``from_pretrained``, starts a generation engine over them (``engine.kind``; see engine.py for the seam), and turns
``TextRequest``s into engine requests (preparation.py: chat templates, validation against the model, sampling,
grammars) and the engine's tokens back into results (here: stop strings and incremental detokenisation, ``n``
choices and ``best_of``, log probabilities, tool calls).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments.common import memory_bytes, resolve_dtype, resolve_model_source, resolve_placement
from deployments.errors import InvalidRequest
from deployments.telemetry import telemetry
from deployments.text.articles import Article, ArticleDelta, ArticleFields, ArticleRequest
from deployments.text.config import EngineConfig, TextConfig
from deployments.text.engine import EngineRequest, GenerationEngine, TokenChoice
from deployments.text.preparation import Prepared, RequestPreparation
from deployments.text.schemas import (
    Choice,
    ChoiceDelta,
    FinishReason,
    StreamStart,
    TextRequest,
    TextResult,
    TokenLogprob,
    ToolCall,
    ToolCallFunction,
    TopLogprob,
    coalesce,
)
from deployments.text.tokens import IncrementalDetokenizer, StopStrings, token_bytes, token_text

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
class _Outcome:
    """One candidate's generated text and tokens."""

    text: str
    finish: FinishReason
    tokens: list[TokenChoice]
    count: int

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens)


class TextService(RequestPreparation):
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
        """A ``StreamStart``, then ``ChoiceDelta``s of every choice as they come (a choice's tokens that are ready
        at once in one delta: a path behind the engine sends fewer, fuller messages), then the full ``TextResult``.
        Closing the stream cancels every choice in the engine."""
        if prepared.candidates > prepared.n:
            raise InvalidRequest.for_field("best_of", "cannot be larger than `n` when streaming")
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
            ended = False
            while not ended:
                ready = [await queue.get()]
                while not queue.empty():  # what else is ready goes in the same message
                    ready.append(queue.get_nowait())
                for item in coalesce(ready):
                    if item is None:
                        ended = True
                        break
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
        # A slower model's clock (faults.stream_delay_s): the k-th token out no sooner than k paces after the first,
        # as from an engine stepping on its own; a stream that fell behind catches up in fuller messages.
        pace, paced_from, paced = self.config.faults.stream_delay_s, 0.0, 0
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
                    if pace:
                        paced_from, paced = paced_from or time.perf_counter(), paced + len(output.tokens)
                        if (wait := paced_from + paced * pace - time.perf_counter()) > 0:
                            await asyncio.sleep(wait)
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
            return TopLogprob(token=token_text(raw), token_id=token_id, logprob=logprob, bytes=list(raw))

        first = entry(choice.token_id, choice.logprob)
        return TokenLogprob(**first.model_dump(), top=[entry(t, lp) for t, lp in choice.top[:top]])

    # --- articles -----------------------------------------------------------------------------------------
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
