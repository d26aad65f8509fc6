"""A static-batching text engine, the benchmark's baseline: padded ``generate`` calls over coalesced batches.

Requests that reach the replica together (``@serve.batch``, merged by a ``Coalescer``) run as one left-padded
``model.generate`` call that lasts as long as its longest row; a request that arrives meanwhile waits for the next
call. It answers in the same shapes as the continuous-batching service (deployments/text/), so the app, the
ingress and the benchmark clients are unchanged, and ``bench.llm`` serves both side by side. One module (past 400
lines) because it is one engine: preparing, batching and streaming belong to each other here.

    import_path: bench.baselines.static_text:build_app   (the app, with this text deployment)
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ray import serve

from deployments.batching import BatchedMethods, BatchingConfig, in_serve_replica
from deployments.common import resolve_dtype, resolve_model_source, resolve_placement
from deployments.errors import InvalidRequest
from deployments.replica import ModelReplica
from deployments.text import Choice, ChoiceDelta, StreamStart, TextConfig, TextRequest, TextResult
from deployments.text.engine import GREEDY_BELOW


class StaticTextConfig(TextConfig):
    """The text config plus the static batch size and wait (the old ``batching``)."""

    batching: BatchingConfig = BatchingConfig(max_batch_size=16, batch_wait_timeout_s=0.01)


@dataclass
class _Row:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class StaticTextEngine:
    """Padded, grouped ``generate`` calls over a batch of requests (greedy or sampled, per-row budgets)."""

    UNSUPPORTED = ("n", "best_of", "logprobs", "echo", "response_format", "tools", "logit_bias", "top_k", "min_p")

    def __init__(self, config: StaticTextConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.placement = resolve_placement(config.device)
        self._lock = threading.Lock()
        source = resolve_model_source(config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        dtype = resolve_dtype(config.dtype, self.placement.device)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(self.placement.device).eval()
        ctx = getattr(self.model.config, "n_positions", None) or self.model.config.max_position_embeddings
        self.context_length = config.max_context_tokens or int(ctx)

    def apply_config(self, config: StaticTextConfig) -> None:
        self.config = config

    def close(self) -> None:
        """Nothing runs in the background."""

    def describe(self) -> dict[str, Any]:
        return {"engine": "static", "context_length": self.context_length, "dtype": str(self.model.dtype)}

    def check_health(self) -> None:
        self.run_batch([self.prepare(TextRequest(prompt="ok", max_tokens=1, temperature=0.0))])

    def prepare(self, request: TextRequest) -> Prepared:
        import torch

        cfg = self.config
        cfg.check_model(request.model)
        for name in self.UNSUPPORTED:
            value = getattr(request, name)
            if value not in (None, False, 1, {}, [], 0, 0.0):
                raise InvalidRequest.for_field(name, "is not supported by the static baseline engine")
        max_tokens = request.max_tokens or cfg.default_max_tokens
        if request.prompt_token_ids is not None:
            ids = torch.tensor([request.prompt_token_ids])
        else:
            text = (
                request.prompt
                if request.prompt is not None
                else self.tokenizer.apply_chat_template(
                    [m.model_dump(include={"role", "content"}) for m in request.messages or []],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
            ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] + max_tokens > self.context_length:
            raise InvalidRequest.for_field(
                "max_tokens", f"prompt + max_tokens exceeds the context of {self.context_length}"
            )
        temperature = cfg.default_temperature if request.temperature is None else request.temperature
        top_p = cfg.default_top_p if request.top_p is None else request.top_p
        min_tokens = max_tokens if request.ignore_eos else min(request.min_tokens, max_tokens)
        sampling: dict[str, Any] = {"do_sample": temperature >= GREEDY_BELOW, "min_new_tokens": min_tokens}
        if sampling["do_sample"]:
            sampling.update(temperature=temperature, top_p=top_p, top_k=0)
        encoded = {"input_ids": ids.to(self.placement.device), "attention_mask": torch.ones_like(ids)}
        return Prepared(
            encoded=encoded,
            prompt_tokens=int(ids.shape[1]),
            max_tokens=max_tokens,
            sampling=sampling,
            stop=list(request.stop),
            seed=request.seed,
        )

    def run_batch(
        self,
        batch: list[Prepared],
        on_piece: Callable[[int, str], None] | None = None,
        on_done: Callable[[int, _Row], None] | None = None,
    ) -> list[_Row]:
        """Requests with the same sampling settings run as one padded ``generate`` call (seeded ones alone)."""
        results: list[_Row | None] = [None] * len(batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for row, prepared in enumerate(batch):
            groups.setdefault(prepared.group_key(), []).append(row)
        for rows in groups.values():
            for row, result in zip(
                rows, self._run_group([batch[r] for r in rows], rows, on_piece, on_done), strict=True
            ):
                results[row] = result
        return [r for r in results if r is not None]

    def _run_group(
        self,
        group: list[Prepared],
        rows: list[int],
        on_piece: Callable[[int, str], None] | None,
        on_done: Callable[[int, _Row], None] | None,
    ) -> list[_Row]:
        import torch

        def result_of(n: int, stream: Any) -> _Row:
            text, finish = stream.finish()
            return _Row(
                text=text,
                finish_reason=finish,
                prompt_tokens=group[n].prompt_tokens,
                completion_tokens=stream.generated_tokens,
            )

        streams = [
            _RowStream(
                self.tokenizer,
                p.stop,
                p.max_tokens,
                p.cancel,
                (lambda piece, row=row: on_piece(row, piece)) if on_piece is not None else None,
            )
            for p, row in zip(group, rows, strict=True)
        ]
        reported: dict[int, _Row] = {}

        def finished(n: int) -> None:
            reported[n] = result_of(n, streams[n])
            if on_done is not None:
                on_done(rows[n], reported[n])

        watcher = _watcher_class()(streams, finished)
        inputs = _left_pad([p.encoded for p in group], self.tokenizer.pad_token_id)
        first = group[0]
        with self._lock, torch.inference_mode():
            if first.seed is not None:
                torch.manual_seed(first.seed)
            self.model.generate(
                **{k: v.to(self.placement.device) for k, v in inputs.items()},
                max_new_tokens=max(p.max_tokens for p in group),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                streamer=watcher,
                stopping_criteria=[watcher],
                **first.sampling,
            )
        for n in range(len(group)):
            if n not in reported:
                finished(n)
        return [reported[n] for n in range(len(group))]


@dataclass
class Prepared:
    """A validated, encoded request: everything ``run`` needs. ``cancel`` stops its row of a batch (set when
    the caller goes away), so a client that disconnects stops costing compute."""

    encoded: dict[str, Any]
    prompt_tokens: int
    max_tokens: int
    sampling: dict[str, Any]
    stop: list[str]
    seed: int | None
    cancel: threading.Event = field(default_factory=threading.Event)

    def group_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one ``generate`` call (same sampling; a seed runs alone)."""
        return (tuple(sorted(self.sampling.items())), None if self.seed is None else ("seeded", id(self)))


def _left_pad(encoded: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack single-row encodings, padded on the left (decoder-only models continue from the right)."""
    import torch

    if len(encoded) == 1:
        return encoded[0]
    width = max(e["input_ids"].shape[1] for e in encoded)
    ids, masks = [], []
    for e in encoded:
        pad = width - e["input_ids"].shape[1]
        row = e["input_ids"][0]
        mask = e.get("attention_mask", torch.ones_like(e["input_ids"]))[0]
        ids.append(torch.cat([torch.full((pad,), pad_id, dtype=row.dtype), row.cpu()]))
        masks.append(torch.cat([torch.zeros(pad, dtype=mask.dtype), mask.cpu()]))
    return {"input_ids": torch.stack(ids), "attention_mask": torch.stack(masks)}


class _RowStream:
    """One request's text as its tokens arrive: decoding, stop sequences, its own token budget and cancel.

    Stop sequences count in the generated text only (OpenAI semantics; transformers' own ``stop_strings``
    also match across the prompt's tail). Text that could begin a stop sequence, or a character whose
    UTF-8 bytes are still incomplete, is held back until it is certain.
    """

    def __init__(
        self,
        tokenizer: Any,
        stops: list[str],
        max_tokens: int,
        cancel: threading.Event | None,
        emit: Callable[[str], None] | None,
    ) -> None:
        self.tokenizer, self.stops, self.max_tokens, self.cancel, self.emit = tokenizer, stops, max_tokens, cancel, emit
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stop_at: int | None = None
        self.hit_eos = False
        self.hold = max((len(s) for s in stops), default=1) - 1

    @property
    def generated_tokens(self) -> int:
        return len(self.ids) + int(self.hit_eos)

    @property
    def done(self) -> bool:
        cancelled = self.cancel is not None and self.cancel.is_set()
        return self.stop_at is not None or self.hit_eos or cancelled or len(self.ids) >= self.max_tokens

    def push(self, token: int) -> None:
        if self.done:  # a finished row of a batch keeps receiving padding
            return
        if token == self.tokenizer.eos_token_id:
            self.hit_eos = True
            return
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (self.text.find(s) for s in self.stops) if i != -1]
        if hits:
            self.stop_at = min(hits)
            self._send(self.stop_at)
        else:
            self._send(len(self.text.rstrip("\ufffd")) - self.hold)

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            piece, self.sent = self.text[self.sent : upto], upto
            if self.emit is not None:
                self.emit(piece)

    def finish(self) -> tuple[str, Literal["stop", "length"]]:
        end = self.stop_at if self.stop_at is not None else len(self.text)
        self._send(end)
        return self.text[:end], "stop" if (self.stop_at is not None or self.hit_eos) else "length"


@functools.cache
def _watcher_class() -> type:
    """Built on first use so that importing this module does not import transformers."""
    from transformers import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class GenerationWatcher(BaseStreamer, StoppingCriteria):
        """Feeds each generated token to its row's ``_RowStream`` and tells ``generate`` which rows are done
        (stop sequence, own token budget, cancel), reporting each row once as it finishes."""

        def __init__(self, rows: list[_RowStream], finished: Callable[[int], None]) -> None:
            self.rows, self.finished = rows, finished
            self.reported: set[int] = set()
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # generate() hands over the prompt first
                self.prompt_seen = True
                return
            for row, token in zip(self.rows, value.reshape(len(self.rows), -1)[:, -1].tolist(), strict=True):
                row.push(token)

        def end(self) -> None:
            """Called by generate() when it is done; the engine reports rows not reported yet."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            done = [row.done for row in self.rows]
            for n, is_done in enumerate(done):
                if is_done and n not in self.reported:
                    self.reported.add(n)
                    self.finished(n)
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return GenerationWatcher


def _result(row: _Row, model: str) -> TextResult:
    choice = Choice(index=0, text=row.text, finish_reason=row.finish_reason, completion_tokens=row.completion_tokens)
    return TextResult(
        choices=[choice], prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, model=model
    )


@serve.deployment(name="text")
class StaticTextDeployment(BatchedMethods, ModelReplica[StaticTextConfig, StaticTextEngine]):
    """The old text deployment: ``@serve.batch`` + ``Coalescer`` over ``StaticTextEngine``."""

    service: ClassVar[str] = "text"
    config_cls = StaticTextConfig
    batched_methods = ("_generate_batch", "_stream_batch")

    def load_model(self, config: StaticTextConfig) -> StaticTextEngine:
        return StaticTextEngine(config)

    def batch_runner(self, model: StaticTextEngine) -> Callable[..., list[_Row]]:
        return model.run_batch

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, batch: list[Prepared]) -> list[_Row]:
        return await self.coalescer_for(self.model).submit(batch)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _stream_batch(self, batch: list[Prepared]) -> AsyncIterator[list[Any]]:
        async for step in self._stream_steps(batch):
            yield step

    async def _stream_steps(self, batch: list[Prepared]) -> AsyncIterator[list[Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, str | _Row] | None] = asyncio.Queue()

        def put(row: int, item: str | _Row) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (row, item))

        work = asyncio.ensure_future(self.coalescer_for(self.model).submit(batch, put, put))
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        finished = [False] * len(batch)
        try:
            while (event := await queue.get()) is not None:
                row, item = event
                step: list[Any] = [StopIteration if done else "" for done in finished]
                step[row] = item
                yield step
                finished[row] = finished[row] or isinstance(item, _Row)
            work.result()
        finally:
            if not work.done():
                for prepared in batch:
                    prepared.cancel.set()

    async def generate(self, request: TextRequest) -> TextResult:
        prepared = self.model.prepare(request)
        try:
            row = (
                (await self.coalescer_for(self.model).submit([prepared]))[0]
                if not in_serve_replica()
                else (await self._generate_batch(prepared))
            )
        finally:
            prepared.cancel.set()
        return _result(row, self.model.config.name)

    async def generate_many(self, requests: list[TextRequest]) -> list[TextResult]:
        """The prompts of one completion (the ingress sends them in one call): batched like any others."""
        return list(await asyncio.gather(*(self.generate(r) for r in requests)))

    async def generate_stream(self, request: TextRequest) -> AsyncIterator[StreamStart | ChoiceDelta | TextResult]:
        model = self.model
        prepared = model.prepare(request)
        yield StreamStart(model=model.config.name, prompt_tokens=prepared.prompt_tokens)
        try:
            async for item in self._stream_batch(prepared):
                if isinstance(item, _Row):
                    yield ChoiceDelta(finish_reason=item.finish_reason)
                    yield _result(item, model.config.name)
                elif item != "":
                    yield ChoiceDelta(text=item)
        finally:
            prepared.cancel.set()


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The content-studio app with the static text deployment in place of the continuous-batching one."""
    from app.builder import AppArgs, build_graph

    return build_graph(AppArgs.model_validate(args or {}), replace={"text": StaticTextDeployment})
