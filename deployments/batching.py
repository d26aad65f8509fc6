"""Dynamic batching for services whose model takes a batch per call (the image service).

``@serve.batch`` forms a batch from the requests that arrive within its wait window and queues it behind the model
call that is running; a ``Coalescer`` merges every batch that waits behind that call into the next one. The text
service does not batch this way: its continuous-batching engine admits requests into the running batch token by
token (deployments/text/).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from pydantic import Field

from deployments.common import StrictModel
from deployments.telemetry import telemetry


class BatchingConfig(StrictModel):
    """Dynamic batching (``@serve.batch``): requests that arrive together run as one model call."""

    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests in one batch; 1 turns batching off.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0.0, le=5.0, description="How long the first request of a batch waits for others to join."
    )


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


class BatchedMethods:
    """Mixin for a ``ModelReplica`` whose ``@serve.batch`` methods take their size and wait from the config's
    ``batching`` (changed in place) and run through a ``Coalescer`` per loaded model."""

    batched_methods: ClassVar[tuple[str, ...]] = ()
    service: ClassVar[str]
    model: Any  # the replica's loaded model

    def configured(self, config: Any) -> None:
        """``ModelReplica``'s hook: every config applied sizes the batched methods."""
        self.configure_batching(config.batching)

    def configure_batching(self, batching: BatchingConfig) -> None:
        if not in_serve_replica():
            return
        for name in self.batched_methods:
            method = getattr(self, name)
            method.set_max_batch_size(batching.max_batch_size)
            method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def batch_runner(self, model: Any) -> Callable[..., list[Any]]:
        """``run(rows, on_piece, on_done) -> results`` for the loaded model (see ``Coalescer``)."""
        raise NotImplementedError

    def coalescer_for(self, model: Any) -> Coalescer:
        """Merges batches that wait for the model into one call (per model: a new model gets its own)."""
        cached = getattr(self, "_coalesced", None)
        if cached is None or cached[0] is not model:
            cached = (
                model,
                Coalescer(
                    self.batch_runner(model),
                    max_rows=lambda: model.config.batching.max_batch_size,
                    observe=lambda rows: telemetry.observe("content_studio_batch_size", rows, service=self.service),
                ),
            )
            self._coalesced = cached
        return cached[1]

    async def run_one(self, job: Any, batch: Callable[[Any], Awaitable[Any]]) -> Any:
        """One prepared job through the ``@serve.batch`` method ``batch``; outside a replica (plain tests, where
        ``@serve.batch`` cannot run) straight to the model's coalescer."""
        if not in_serve_replica():
            return (await self.coalescer_for(self.model).submit([job]))[0]
        return await batch(job)


def in_serve_replica() -> bool:
    """Inside a Serve replica (``@serve.batch`` needs one); plain unit tests call the model directly."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True
