"""Continuous batching over transformers' ``ContinuousBatchingManager``: token-level scheduling, paged KV cache.
One module past 400 lines because it is one engine: its lifecycle, requests and sampling hook share its state.

One manager per engine runs a background loop; each step it schedules prompt chunks and one decode token per
running request into one forward pass. A request submitted now joins at the next step and leaves as soon as it is
done (end of text, its own ``max_tokens``, a cancel); its KV blocks are freed at once.

transformers' per-request processors carry one scalar per row (temperature, top-k, top-p). Everything else a
request may ask for (penalties, logit bias, min_p, min_tokens, seeds, grammar masks, log probabilities) is applied
by ``EngineSampler``: a processor of ours placed in the manager's sampling step, which sees the batch's rows in
order, picks each row's token with ``sample_step`` and hands it back as the only finite logit (the manager's own
sampling then takes the arg-max). The manager runs greedy, without CUDA graphs (our step runs Python per row) and
without async double-buffering (the step must see every row's latest token).

Admission (admission.py): a sequence runs only when it fits the KV cache; others queue, one more is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from deployments.errors import Unavailable
from deployments.text.admission import Admission
from deployments.text.config import EngineConfig
from deployments.text.engine import EngineOutput, EngineRequest, FinishReason, TokenChoice

logger = logging.getLogger("content_studio.text.engine")
CPU_DEFAULT_BLOCKS = 256


class _Stream:
    """One submitted request: its sampling state, where its outputs land, and what was sent of them."""

    def __init__(self, request: EngineRequest, row: Any, reserved: int, admission: Admission) -> None:
        self.request, self.row, self.reserved = request, row, reserved
        self.admission = admission  # the engine's admission when this request took its place
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.sent = 0
        self.done = False


class TransformersEngine:
    """``GenerationEngine`` over transformers' continuous batching (see the module docstring)."""

    kind = "transformers"

    def __init__(
        self, model: Any, tokenizer: Any, config: EngineConfig, device: str, context_length: int, label: str = "text"
    ) -> None:
        import torch

        from deployments.text.sampling import TokenTables
        from deployments.text.tokens import token_bytes_table

        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.label = label  # the served model's name, on the engine's metrics
        self._gauges_at = 0.0
        kv = config.kv_cache
        self.num_blocks = kv.num_blocks or (None if device == "cuda" else CPU_DEFAULT_BLOCKS)
        vocab = int(model.get_output_embeddings().weight.shape[0])
        eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.tables = TokenTables(vocab, self.eos_ids, token_bytes_table(tokenizer, vocab))
        self.capacity_tokens = (self.num_blocks or 0) * kv.page_size  # known after start() on CUDA
        self.context_length = context_length if not self.capacity_tokens else min(context_length, self.capacity_tokens)
        self._streams: dict[str, _Stream] = {}
        self._generator = torch.Generator(device=device)
        self._generator.seed()
        self.manager: Any = None
        self.admission: Admission | None = None
        self.admission_open = True
        self._closing: threading.Thread | None = None
        self.steps = 0

    # --- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        kv = self.config.kv_cache
        generation = GenerationConfig(
            do_sample=False,  # EngineSampler picks every token; the manager's arg-max just takes it
            eos_token_id=self.eos_ids[0] if self.eos_ids else None,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=16,
        )
        cb = ContinuousBatchingConfig(
            page_size=kv.page_size,
            num_blocks=self.num_blocks,
            max_memory_percent=kv.gpu_memory_share if self.num_blocks is None else None,
            max_batch_tokens=kv.max_batch_tokens,
            max_requests_per_batch=kv.max_requests_per_batch,
            allow_block_sharing=kv.prefix_sharing,
            use_cuda_graph=False,
            use_async_batching=False,
            scheduler_type="fifo",
        )
        manager = self.model.init_continuous_batching(generation_config=generation, continuous_batching_config=cb)
        _install_sampler(manager, self)
        _start_as_daemon(manager)
        self.manager = manager
        if not self.capacity_tokens:  # sized from GPU memory: ask the cache once it exists
            self.capacity_tokens = self._cache_tokens()
            self.context_length = min(self.context_length, self.capacity_tokens)
        budget = int(self.capacity_tokens * self.config.kv_overcommit)
        self.admission = Admission(self.config.max_running, self.config.max_waiting, budget, self.config.retry_after_s)

    def _revive(self) -> None:
        """The generation loop died (a fatal error in a step): fail what it held, start a fresh loop."""
        dead = self.manager
        error = getattr(getattr(dead, "background_thread_status", None), "fatal_error", None)
        logger.error("the continuous batching loop died (%s); starting a new one", error)
        for stream in list(self._streams.values()):
            _put(stream, Unavailable(f"the generation loop failed: {error}"))
        self.manager = None
        self.start()

    def _cache_tokens(self) -> int:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            processor = self.manager.batch_processor
            if processor is not None:
                cache = processor.cache
                return int(cache.num_blocks * self.config.kv_cache.page_size)
            time.sleep(0.05)
        raise Unavailable("the continuous batching loop did not start within 60 s")

    def close(self, drain_s: float = 120.0, wait: bool = False) -> None:
        """Stop taking requests; those running finish (for up to ``drain_s``), then the loop stops and frees the
        KV cache. Returns at once unless ``wait`` (a swapped-out model drains while the new one serves)."""
        manager = self.manager
        if manager is None or self._closing is not None:
            if wait and self._closing is not None:
                self._closing.join()
            return
        self.admission_open = False

        def drain() -> None:
            manager.stop(block=True, timeout=drain_s)  # flush: running requests complete first
            self.manager = None
            for stream in list(self._streams.values()):
                _put(stream, Unavailable("the text engine stopped before this request finished"))

        self._closing = threading.Thread(target=drain, name="text-engine-drain", daemon=True)
        self._closing.start()
        if wait:
            self._closing.join()

    @property
    def running(self) -> bool:
        return self.manager is not None and self.manager.is_running() and self.admission_open

    # --- requests -----------------------------------------------------------------------------------------
    async def submit(self, request: EngineRequest) -> None:
        from deployments.text.sampling import RowState

        if self.manager is not None and not self.manager.is_running() and self.admission_open:
            self._revive()
        if not self.running or self.admission is None:
            raise Unavailable("the text engine is not running")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is in use")
        reserved = len(request.prompt_ids) + request.params.max_tokens
        admission = self.admission
        await admission.acquire(reserved, request.group)
        try:
            matcher = self._matcher(request.params.grammar)
            row = RowState(request.params, request.prompt_ids, matcher, self.device)
            stream = _Stream(request, row, reserved, admission)
            self._streams[request.request_id] = stream
            manager = self.manager
            manager.register_result_handler(request.request_id, lambda output: stream.queue.put_nowait(output))
            eos = -1 if request.params.ignore_eos and matcher is None else None  # -1: no end-of-text stops it
            added = manager.add_request(
                list(request.prompt_ids),
                request_id=request.request_id,
                max_new_tokens=request.params.max_tokens,
                streaming=True,
                eos_token_id=eos,
                cs_request=request.request_id,
            )
            if added is None:
                raise Unavailable("the text engine is stopping")
        except BaseException:
            if request.request_id in self._streams:
                self._forget(request.request_id)
            else:
                admission.release(reserved)
            raise

    async def stream(self, request_id: str) -> AsyncIterator[EngineOutput]:
        stream = self._streams[request_id]
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, Exception):
                    raise item
                if item.error is not None:
                    raise Unavailable(f"generation failed: {item.error}")
                output = self._output(stream, item)
                if output.finished:
                    stream.done = True
                yield output
                if stream.done:
                    return
        finally:
            if not stream.done and self.manager is not None:
                self.manager.cancel_request(request_id)  # frees its KV blocks at the next step
            self._forget(request_id)

    def _output(self, stream: _Stream, item: Any) -> EngineOutput:
        row = stream.row
        count = len(item.generated_tokens)
        with row.lock:
            choices = list(row.choices[stream.sent : count])
        stream.sent = max(stream.sent, count)
        finish: FinishReason | None = None
        if item.is_finished():
            last = item.generated_tokens[-1] if item.generated_tokens else None
            hit_eos = last in self.eos_ids and not stream.request.params.ignore_eos
            finish = "stop" if hit_eos and not row.closing else "length"
            if hit_eos and choices and choices[-1].token_id == last:
                choices = choices[:-1]  # end-of-text is a signal, not text: it counts, but is not returned
        return EngineOutput(tokens=choices, finish_reason=finish, forced_close=row.closing)

    def cancel(self, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if stream is None or self.manager is None:
            return
        self.manager.cancel_request(request_id)
        _put(stream, Unavailable("cancelled"))

    def _forget(self, request_id: str) -> None:
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return
        if self.manager is not None:
            router = self.manager.output_router
            with router._lock:  # a cancelled request gets no last output: drop its handler ourselves
                router.result_handlers.pop(request_id, None)
        stream.admission.release(stream.reserved)

    def row(self, request_id: str) -> Any:
        """The sampling state of a running request (the sampler looks rows up by id)."""
        stream = self._streams.get(request_id)
        return stream.row if stream is not None else None

    def _matcher(self, grammar: str | None) -> Any:
        if grammar is None:
            return None
        import llguidance

        from deployments.text.structured import ll_tokenizer

        matcher = llguidance.LLMatcher(ll_tokenizer(self.tokenizer, self.tables.vocab_size), grammar)
        if matcher.is_error():
            raise ValueError(f"the grammar cannot be used: {matcher.get_error()}")
        return matcher

    # --- prompt log probabilities -------------------------------------------------------------------------
    async def prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[TokenChoice | None]:
        """One forward pass over the prompt while the batch is paused (the model is shared with the loop)."""
        return await asyncio.to_thread(self._prompt_logprobs, prompt_ids, top)

    def _prompt_logprobs(self, prompt_ids: list[int], top: int) -> list[TokenChoice | None]:
        import torch

        pause = self.manager.pause() if self.running else contextlib.nullcontext()
        with pause, torch.inference_mode():
            logits = self.model(torch.tensor([prompt_ids], device=self.model.device)).logits[0].float()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        out: list[TokenChoice | None] = [None]
        for position, token in enumerate(prompt_ids[1:]):
            row = logprobs[position]
            alternatives: list[tuple[int, float]] = []
            if top:
                values, ids = row.topk(top)
                alternatives = list(zip(ids.tolist(), values.tolist(), strict=True))
            out.append(TokenChoice(token, float(row[token]), alternatives))
        return out

    # --- state --------------------------------------------------------------------------------------------
    def after_step(self, rows: int) -> None:
        """Count a step (in the loop's thread); the batch occupancy per step, and every second the gauges."""
        import time

        from deployments.telemetry import telemetry

        self.steps += 1
        telemetry.observe("content_studio_engine_step_requests", rows, model=self.label)
        now = time.monotonic()
        if now - self._gauges_at >= 1.0:
            self._gauges_at = now
            state = self.describe()
            telemetry.set("content_studio_engine_running", state["running"], model=self.label)
            telemetry.set("content_studio_engine_waiting", state["waiting"], model=self.label)
            telemetry.set("content_studio_kv_cache_used", state["kv_cache"]["used_share"] or 0.0, model=self.label)

    def describe(self) -> dict[str, Any]:
        kv = self.config.kv_cache
        used, held, holders = None, 0, 0
        processor = self.manager.batch_processor if self.manager is not None else None
        if processor is not None:
            try:
                used = round(1.0 - float(processor.cache.compute_free_capacity(relative=True)), 4)
                tables = [a.block_table for a in processor.cache.cache_allocators.values()]
                held = sum(len(blocks) for table in tables for blocks in list(table.values()))
                holders = len({rid for table in tables for rid in list(table)})
            except Exception:  # the cache's bookkeeping moves between releases: a missing figure is no failure
                used = None
        admission = self.admission
        return {
            "engine": self.kind,
            "kv_cache": {
                "page_size": kv.page_size,
                "blocks": self.num_blocks if self.num_blocks is not None else self.capacity_tokens // kv.page_size,
                "capacity_tokens": self.capacity_tokens,
                "used_share": used,  # held by running requests, or kept for prefix reuse (evictable)
                "blocks_held": held,
                "requests_holding_blocks": holders,
                "max_batch_tokens": kv.max_batch_tokens,
                "max_requests_per_batch": kv.max_requests_per_batch,
            },
            "running": admission.running if admission else 0,  # sequences
            "waiting": admission.waiting if admission else 0,  # requests (each one or more sequences)
            "reserved_tokens": admission.reserved if admission else 0,
            "steps": self.steps,
        }


def _put(stream: _Stream, item: Any) -> None:
    """Wake a stream's reader from any thread."""
    if stream.loop.is_closed():
        return
    stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _placeholder() -> Any:
    """Sampling state for a row whose request was cancelled between scheduling and sampling."""
    from deployments.text.engine import SamplingParams
    from deployments.text.sampling import RowState

    return RowState(SamplingParams(max_tokens=1, temperature=0.0), [])


def _start_as_daemon(manager: Any) -> None:
    """Start the manager's generation loop as a daemon thread. The library starts a plain thread, which would keep
    a process alive at exit whenever an engine was not stopped (a test session, the bench's baseline process); a
    thread inherits daemon status from the thread that creates it, so create it from a short-lived daemon thread.
    """
    failure: list[BaseException] = []

    def start() -> None:
        try:
            manager.start()
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    starter = threading.Thread(target=start, name="text-engine-start", daemon=True)
    starter.start()
    starter.join()
    if failure:
        raise failure[0]


def _install_sampler(manager: Any, engine: TransformersEngine) -> None:
    """Put ``EngineSampler`` into the manager's processor list before its loop starts (the loop sizes its
    argument storage from the list)."""
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    from deployments.text.sampling import sample_step

    class EngineSampler(ContinuousBatchingLogitsProcessor):
        """Picks every row's token with ``sample_step`` (rows are looked up by our request id)."""

        supported_kwargs: dict[str, type] = {"cs_request": str}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            self.rows: list[Any] = []

        def fill_defaults(self, int32_tensor: Any) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> Any:
            import torch

            self.rows = [
                engine.row(r.state.logit_processor_kwargs.get("cs_request", "")) for r in requests_with_new_token
            ]
            return torch.zeros(len(self.rows), dtype=torch.int32)

        def __call__(self, scores: Any, tensor_arg: Any) -> Any:
            """Rows past the requests with a new token are padding (a request still prefilling its prompt in
            chunks sits in the batch without one): they get any token, which the batch ignores."""
            import torch

            rows = [row if row is not None else _placeholder() for row in self.rows]
            picked = torch.full_like(scores, float("-inf"))
            count = min(len(rows), scores.shape[0])
            try:
                tokens = sample_step(scores[:count], rows[:count], engine.tables, engine._generator)
            except Exception:  # the loop must outlive a bad row: the batch takes the likeliest tokens instead
                logger.exception("the sampling step failed; taking the arg-max for this step")
                tokens = scores[:count].argmax(dim=-1).tolist()
            engine.after_step(count)
            index = torch.arange(count, device=scores.device)
            picked[index, torch.tensor(tokens, device=scores.device, dtype=torch.long)] = 0.0
            picked[count:, 0] = 0.0
            return picked

    processors = manager.logit_processor
    processors.logits_processor.append(EngineSampler())
    processors.tensors_required += 1
    processors._retrieve_processors_kwargs()
    processors.do_processing = True
