"""The thin Ray Serve layer shared by the model services.

A service's configuration is its deployment's ``user_config``. Serve hands it to ``reconfigure`` when a replica
starts and again whenever the Serve config changes it (``serve deploy``), so one code path loads the first model
and swaps in later versions: a change of model source, device or dtype loads a new engine beside the old one and
swaps the reference once it is ready (requests in flight finish on the old one); any other change (generation
defaults, limits) is applied to the live engine without reloading weights.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from deployments.common import InjectedFault, Placement, RequestError, ServiceConfig, ServiceNotReady
from deployments.telemetry import telemetry


class Engine(Protocol):
    """What the replica needs from a service's plain class."""

    config: Any
    placement: Placement

    def apply_config(self, config: Any) -> None: ...

    def check_health(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


ConfigT = TypeVar("ConfigT", bound=ServiceConfig)
EngineT = TypeVar("EngineT", bound=Engine)
ResultT = TypeVar("ResultT")
logger = logging.getLogger("content_studio.replica")


class Coalescer:
    """Runs batches on a worker thread one at a time, merging every batch that arrived meanwhile into the next run.

    ``@serve.batch`` forms a batch from what arrives within its wait window, then queues it behind the batch
    that is running; under steady load that leaves many small batches waiting in line. Merging what waits
    (up to ``max_rows()``) turns them into one model call. ``run(rows, on_piece, on_done)`` must return one
    result per row; callbacks get the row index within their own batch.
    """

    def __init__(
        self,
        run: Callable[..., list[Any]],
        max_rows: Callable[[], int],
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.run, self.max_rows, self.observe = run, max_rows, observe
        self._pending: list[tuple[list[Any], Any, Any, asyncio.Future[list[Any]]]] = []
        self._drainer: asyncio.Future[None] | None = None

    async def submit(self, rows: list[Any], on_piece: Any = None, on_done: Any = None) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, on_piece, on_done, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            take = [self._pending.pop(0)]
            limit = self.max_rows()
            while self._pending and sum(len(t[0]) for t in take) + len(self._pending[0][0]) <= limit:
                take.append(self._pending.pop(0))
            if self.observe is not None:
                self.observe(sum(len(t[0]) for t in take))
            await self._run_merged(take)

    async def _run_merged(self, take: list[tuple[list[Any], Any, Any, asyncio.Future[list[Any]]]]) -> None:
        rows = [row for batch, *_ in take for row in batch]
        owner: list[tuple[int, int]] = [(n, r) for n, (batch, *_) in enumerate(take) for r in range(len(batch))]

        def route(which: int) -> Any:
            if not any(t[which] for t in take):
                return None

            def callback(row: int, item: Any) -> None:
                n, r = owner[row]
                target = take[n][which]
                if target is not None:
                    target(r, item)

            return callback

        try:
            results = await asyncio.to_thread(self.run, rows, route(1), route(2))
        except Exception as exc:
            for *_, future in take:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for batch, _, _, future in take:
            if not future.done():
                future.set_result(results[start : start + len(batch)])
            start += len(batch)


def config_version(config: ServiceConfig) -> str:
    """A short, stable fingerprint of a config (never Python's salted ``hash``)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


class ModelReplica(Generic[ConfigT, EngineT]):
    """Base for the Serve deployment classes: holds one engine, swaps it on ``reconfigure``."""

    service: ClassVar[str]
    config_cls: ClassVar[type[ServiceConfig]]
    # Config fields whose change needs new weights; anything else is applied in place.
    reload_fields: ClassVar[frozenset[str]] = frozenset({"model", "device", "dtype"})
    # ``@serve.batch`` methods whose batch size and wait come from the config's ``batching`` (changed in place).
    batched_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any] | None = None, engine: EngineT | None = None) -> None:
        self._engine: EngineT | None = engine
        self._loaded_at: float | None = time.time() if engine is not None else None
        self._reloads = 0
        if engine is None and config is not None:
            self._install(self.build_engine(self.config_cls.model_validate(config)))
        if self._engine is not None:
            self._configure_batching(self._engine.config)

    # --- subclasses -----------------------------------------------------------------------------------
    def build_engine(self, config: ConfigT) -> EngineT:
        raise NotImplementedError

    # --- Serve hooks ----------------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = self.config_cls.model_validate(user_config)
        self._configure_batching(config)
        current = self._engine
        if current is not None and not self._needs_reload(current.config, config):
            current.apply_config(config)
            return
        # Load off the event loop so that the old engine keeps answering while the new one loads.
        self._install(await asyncio.to_thread(self.build_engine, config))

    def _configure_batching(self, config: ServiceConfig) -> None:
        """Apply the config's batch size and wait to every ``@serve.batch`` method, in place."""
        batching = getattr(config, "batching", None)
        if batching is None or not self.in_serve:
            return
        for name in self.batched_methods:
            method = getattr(self, name)
            method.set_max_batch_size(batching.max_batch_size)
            method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    async def check_health(self) -> None:
        """Serve's periodic probe: the model must answer (each engine runs a tiny real inference)."""
        if self.engine.config.faults.fail_health_checks:
            raise InjectedFault(f"injected health check failure in the {self.service} service")
        await asyncio.to_thread(self.engine.check_health)

    async def run(self, fn: Callable[..., ResultT], *args: Any) -> ResultT:
        """Run a blocking engine call off the event loop, after any configured fault injection, and record
        its metrics."""
        return await self.measure(getattr(fn, "__name__", "call"), args, lambda: asyncio.to_thread(fn, *args))

    async def measure(self, method: str, args: tuple[Any, ...], work: Callable[[], Awaitable[ResultT]]) -> ResultT:
        """Await ``work()`` (e.g. a dynamic batch) after fault injection, recording the request's metrics."""
        started = time.perf_counter()
        outcome = "error"
        try:
            await self.inject_faults()
            result = await work()
            outcome = "ok"
            try:
                self.observe(method, args, result, time.perf_counter() - started)
            except Exception:  # metrics must never fail a request
                logger.warning("recording metrics for %s.%s failed", self.service, method, exc_info=True)
            return result
        except RequestError:
            outcome = "client_error"
            raise
        finally:
            seconds = time.perf_counter() - started
            telemetry.count("content_studio_requests", service=self.service, method=method, outcome=outcome)
            telemetry.observe("content_studio_request_seconds", seconds, service=self.service, method=method)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        """Record a service's own metrics for a successful call (tokens, images, audio seconds...)."""

    async def inject_faults(self) -> None:
        faults = self.engine.config.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.error_rate and random.random() < faults.error_rate:
            raise InjectedFault(f"injected fault in the {self.service} service (faults.error_rate)")

    @functools.cached_property
    def in_serve(self) -> bool:
        """Inside a Serve replica (``@serve.batch`` needs one); plain unit tests call the engine directly."""
        try:
            from ray import serve

            serve.get_replica_context()
            return True
        except Exception:
            return False

    def batch_runner(self, engine: EngineT) -> Callable[..., list[Any]]:
        """``run(rows, on_piece, on_done) -> results`` for a batched service's engine (see ``coalescer``)."""
        raise NotImplementedError

    @property
    def coalescer(self) -> Coalescer:
        """Merges batches that wait for the model into one call (per engine: a new model gets its own)."""
        engine = self.engine
        cached = getattr(self, "_coalesced", None)
        if cached is None or cached[0] is not engine:
            cached = (
                engine,
                Coalescer(
                    self.batch_runner(engine),
                    max_rows=lambda: engine.config.batching.max_batch_size,
                    observe=lambda rows: telemetry.observe("content_studio_batch_size", rows, service=self.service),
                ),
            )
            self._coalesced = cached
        return cached[1]

    # --- shared methods -------------------------------------------------------------------------------
    @property
    def engine(self) -> EngineT:
        if self._engine is None:
            raise ServiceNotReady(
                f"the {self.service} service has no model: give it a user_config with at least `model`"
            )
        return self._engine

    async def describe(self) -> dict[str, Any]:
        """Model, device and placement of this replica, for /v1/health and /v1/models."""
        engine = self.engine
        return {
            "service": self.service,
            "status": "ok",
            "model": engine.config.name,
            "source": engine.config.model,
            "config_version": config_version(engine.config),
            "loaded_at": self._loaded_at,
            "reloads": self._reloads,
            **engine.placement.as_dict(),
            **engine.describe(),
        }

    def _needs_reload(self, old: ServiceConfig, new: ServiceConfig) -> bool:
        return any(getattr(old, f) != getattr(new, f) for f in self.reload_fields)

    def _install(self, engine: EngineT) -> None:
        old = self._engine
        if old is not None:
            self._reloads += 1
            close = getattr(old, "close", None)  # stops an engine's background work (requests may still finish)
            if close is not None:
                close()
        self._engine = engine
        self._loaded_at = time.time()


_DONE = object()


async def iterate_in_thread(
    work: Callable[[Callable[[Any], None], threading.Event], Any],
) -> AsyncIterator[Any]:
    """Run blocking ``work(emit, cancel)`` in a thread; yield what it emits, then what it returns.

    When the consumer stops early (a client disconnected, a timeout), ``cancel`` is set so the work can stop
    instead of finishing for nobody.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    task = asyncio.ensure_future(asyncio.to_thread(work, emit, cancel))
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _DONE))
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
        yield task.result()  # raises the work's error, if any
    finally:
        cancel.set()
