"""Text service: a Hugging Face ``transformers`` causal LM that writes articles and descriptions."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from ray import serve

from deployments.common import (
    BatchingConfig,
    ModelOutputError,
    Narrative,
    RequestError,
    ServiceConfig,
    StrictModel,
    memory_bytes,
    resolve_dtype,
    resolve_model_source,
    resolve_placement,
)
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

MAX_PROMPT_CHARS = 32_000
MAX_TOKENS_BOUND = 4096  # a hard schema bound; the model's context and the config may allow less
ARTICLE_MIN_TOKENS = 16
GREEDY_BELOW = 1e-5


ArticleLength = Literal["short", "medium", "long"]


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
    article_system_prompt: str = Field(
        "You are a staff writer. Answer with a title on the first line, then the article.",
        max_length=4000,
        description="System message for articles written for the content pipeline.",
    )
    article_prompt: str = Field(
        "Write a {length}, {style} article about: {topic}",
        max_length=4000,
        description="User message for articles; `{topic}`, `{style}` and `{length}` are filled in.",
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Dynamic batching of generations, changeable in place."
    )
    article_tokens: dict[ArticleLength, int] = Field(
        default_factory=lambda: {"short": 128, "medium": 320, "long": 640},
        description="Token budget of an article per requested length (capped by `max_tokens_limit`).",
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
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_BOUND, description="End-of-text is not allowed before this.")
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


class StreamStart(StrictModel):
    """First item of a text stream: the request was accepted by this model."""

    model: str
    prompt_tokens: int


class ArticleRequest(StrictModel):
    """An article for the content pipeline: the prompt comes from config, the topic from the user."""

    topic: str = Field(min_length=1, max_length=500)
    style: str | None = Field(None, max_length=100)
    length: ArticleLength = "short"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    model: str | None = Field(None, max_length=256)


class Article(Narrative):
    """A written article: its title and body, with what it cost."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    model: str

    @classmethod
    def parse(cls, result: TextResult, topic: str) -> Article:
        """Title from the first non-empty line (markdown and `Title:` stripped), body from the rest."""
        lines = [line.strip() for line in result.text.strip().splitlines()]
        lines = [line for line in lines if line]
        title = lines[0].lstrip("#").strip() if lines else ""
        if title.lower().startswith("title:"):
            title = title[6:].strip()
        body = "\n".join(lines[1:]).strip()
        if not body:  # a one-paragraph answer: it is the body, and the topic names it
            body, title = result.text.strip(), topic.strip()[:120]
        if not body:
            raise ModelOutputError("the model wrote an empty article")
        return cls(
            title=title[:200] or topic.strip()[:120],
            body=body,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=result.finish_reason,
            model=result.model,
        )


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

    def prepare(self, request: TextRequest) -> Prepared:
        """Validate against the model and config, and encode: everything before the model runs."""
        cfg = self.config
        cfg.check_model(request.model)
        max_tokens = request.max_tokens or cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise RequestError("max_tokens", f"must be at most {cfg.max_tokens_limit} for this model")
        temperature = cfg.default_temperature if request.temperature is None else request.temperature
        top_p = cfg.default_top_p if request.top_p is None else request.top_p
        encoded = self.tokenizer(self.render_prompt(request), return_tensors="pt")
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
        # A temperature this close to 0 would overflow the softmax: it means greedy (as in vLLM).
        sample = temperature >= GREEDY_BELOW
        sampling: dict[str, Any] = {"do_sample": sample, "min_new_tokens": min(request.min_tokens, max_tokens)}
        if sample:
            sampling.update(temperature=temperature, top_p=top_p, top_k=0)
        return Prepared(
            encoded={k: v.to(self.placement.device) for k, v in encoded.items()},
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            sampling=sampling,
            stop=list(request.stop),
            seed=request.seed,
        )

    def run(
        self, prepared: Prepared, emit: Callable[[str], None] | None = None, cancel: threading.Event | None = None
    ) -> TextResult:
        """Generate one request; ``emit`` receives text deltas as tokens arrive; ``cancel`` stops it early."""
        if cancel is not None:
            prepared.cancel = cancel
        on_piece = (lambda _row, piece: emit(piece)) if emit is not None else None
        return self.run_batch([prepared], on_piece)[0]

    def run_batch(
        self,
        batch: list[Prepared],
        on_piece: Callable[[int, str], None] | None = None,
        on_done: Callable[[int, TextResult], None] | None = None,
    ) -> list[TextResult]:
        """Generate a batch: requests with the same sampling settings run as one padded ``generate`` call.

        Each row keeps its own ``max_tokens``, stop sequences and cancel flag (a finished row stops costing
        compute while the others go on); a seeded request runs in its own group so its seed means the same
        output whatever it is batched with. ``on_piece(row, text)`` streams deltas; ``on_done(row, result)``
        fires as soon as a row is finished, so a short request need not wait for a long one.
        """
        results: list[TextResult | None] = [None] * len(batch)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for row, prepared in enumerate(batch):
            groups.setdefault(prepared.group_key(), []).append(row)
        for rows in groups.values():
            group_results = self._run_group([batch[r] for r in rows], rows, on_piece, on_done)
            for row, result in zip(rows, group_results, strict=True):
                results[row] = result
        return [r for r in results if r is not None]

    def _run_group(
        self,
        group: list[Prepared],
        rows: list[int],
        on_piece: Callable[[int, str], None] | None,
        on_done: Callable[[int, TextResult], None] | None,
    ) -> list[TextResult]:
        import torch

        def result_of(n: int, stream: Any) -> TextResult:
            text, finish = stream.finish()
            return TextResult(
                text=text,
                finish_reason=finish,
                prompt_tokens=group[n].prompt_tokens,
                completion_tokens=stream.generated_tokens,
                model=self.config.name,
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
        reported: dict[int, TextResult] = {}

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

    def generate(
        self,
        request: TextRequest,
        emit: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> TextResult:
        """Generate a completion; ``emit`` (optional) gets each new piece of text, stop sequences never leak."""
        return self.run(self.prepare(request), emit, cancel)

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
            min_tokens=ARTICLE_MIN_TOKENS,  # an article is never empty because the model ended it at once
            seed=request.seed,
        )

    def write_article(
        self,
        request: ArticleRequest,
        emit: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Article:
        return Article.parse(self.generate(self.article_request(request), emit, cancel), request.topic)


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


# --- Serve deployment -------------------------------------------------------------------------------------
@serve.deployment(name="text")
class TextDeployment(ModelReplica[TextConfig, TextGenerator]):
    """Every generation goes through dynamic batching (``config.batching``); streams are batched too."""

    service: ClassVar[str] = "text"
    config_cls = TextConfig
    reload_fields = frozenset({"model", "device", "dtype", "revision", "trust_remote_code"})
    batched_methods = ("_generate_batch", "_stream_batch")

    def build_engine(self, config: TextConfig) -> TextGenerator:
        return TextGenerator(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, TextResult | Article) and seconds > 0:
            telemetry.count("content_studio_tokens_generated", result.completion_tokens, model=result.model)
            telemetry.observe(
                "content_studio_tokens_per_second", result.completion_tokens / seconds, model=result.model
            )

    # --- batches ------------------------------------------------------------------------------------------
    def batch_runner(self, engine: TextGenerator) -> Callable[..., list[TextResult]]:
        return engine.run_batch

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, batch: list[Prepared]) -> list[TextResult]:
        return await self.coalescer.submit(batch)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _stream_batch(self, batch: list[Prepared]) -> AsyncIterator[list[Any]]:
        async for step in self._stream_steps(batch):
            yield step

    async def _stream_steps(self, batch: list[Prepared]) -> AsyncIterator[list[Any]]:
        """Each step has one item per request: a text delta, its result when it is done, then StopIteration;
        ``""`` means "nothing new for this request in this step" (the shape ``@serve.batch`` streams in)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, str | TextResult] | None] = asyncio.Queue()

        def put(row: int, item: str | TextResult) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (row, item))

        work = asyncio.ensure_future(self.coalescer.submit(batch, put, put))
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        finished = [False] * len(batch)
        try:
            while (event := await queue.get()) is not None:
                row, item = event
                step: list[Any] = [StopIteration if done else "" for done in finished]
                step[row] = item
                yield step
                finished[row] = finished[row] or isinstance(item, TextResult)
            work.result()  # raises the batch's error, if any
        finally:
            if not work.done():  # nobody listens any more: stop every row
                for prepared in batch:
                    prepared.cancel.set()

    async def _one(self, prepared: Prepared) -> TextResult:
        try:
            if not self.in_serve:  # @serve.batch needs a replica; plain tests go straight to the model
                return (await self.coalescer.submit([prepared]))[0]
            return await self._generate_batch(prepared)
        finally:
            prepared.cancel.set()  # the caller gave up (timeout, disconnect): free its batch row

    async def _stream(self, prepared: Prepared) -> AsyncIterator[str | TextResult]:
        try:
            if self.in_serve:
                async for item in self._stream_batch(prepared):
                    if item != "":
                        yield item
            else:
                async for (item,) in self._stream_steps([prepared]):
                    if item is StopIteration:
                        break
                    if item != "":
                        yield item
        finally:
            prepared.cancel.set()

    # --- methods ------------------------------------------------------------------------------------------
    async def generate(self, request: TextRequest) -> TextResult:
        async def work() -> TextResult:
            return await self._one(self.engine.prepare(request))  # tokenizing one prompt: inline, no thread hop

        return await self.measure("generate", (request,), work)

    async def generate_stream(self, request: TextRequest) -> AsyncIterator[StreamStart | str | TextResult]:
        """A ``StreamStart`` once the request is accepted (a bad request fails before anything streams), then
        text deltas as they are generated, then the full result; closing the stream stops generation."""
        await self.inject_faults()
        engine = self.engine
        prepared = engine.prepare(request)
        yield StreamStart(model=engine.config.name, prompt_tokens=prepared.prompt_tokens)
        started = time.perf_counter()
        async for item in self._stream(prepared):
            if isinstance(item, TextResult):
                self.observe("generate_stream", (request,), item, time.perf_counter() - started)
            yield item

    async def write_article(self, request: ArticleRequest) -> Article:
        async def work() -> Article:
            engine = self.engine
            prepared = await asyncio.to_thread(engine.prepare, engine.article_request(request))
            return Article.parse(await self._one(prepared), request.topic)

        return await self.measure("write_article", (request,), work)

    async def write_article_stream(self, request: ArticleRequest) -> AsyncIterator[str | Article]:
        await self.inject_faults()
        engine = self.engine
        prepared = engine.prepare(engine.article_request(request))
        started = time.perf_counter()
        async for item in self._stream(prepared):
            if isinstance(item, TextResult):
                item = Article.parse(item, request.topic)
                self.observe("write_article_stream", (request,), item, time.perf_counter() - started)
            yield item
