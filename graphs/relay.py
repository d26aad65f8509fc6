"""The outbox relay: what the catalog owes the recommender, delivered until it has it.

Registering a content with the recommender is eventually consistent, without a distributed transaction: the
record and an outbox entry are written in one transaction (graphs/catalog.py); the pipeline then delivers the
entry at once (``deliver``), and a relay in every pipeline replica delivers whatever is still pending (the
recommender was down, the replica died), with back-off, until the recommender has it. An entry being delivered is
claimed, so two replicas do not both send it; registering is idempotent, so an entry delivered twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ray.serve.handle import DeploymentHandle

from deployments.calls import call
from deployments.errors import ServiceError, Unavailable
from deployments.recommend import ItemIn
from graphs.catalog import ContentCatalog, OutboxEntry
from graphs.config import PipelineConfig
from graphs.schemas import STAGES

logger = logging.getLogger("content_studio.relay")


class OutboxRelay:
    """Delivers outbox entries to the recommender: at once for a new content, and in a background task."""

    def __init__(
        self,
        catalog: Callable[[], ContentCatalog],
        config: Callable[[], PipelineConfig],
        recommend: DeploymentHandle,
    ) -> None:
        self.catalog, self.config, self.recommend = catalog, config, recommend
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start this replica's relay on the running loop (first request or health check), once."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop the background task (the replica is shutting down; what is pending stays in the outbox)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(RuntimeError):  # its event loop is closed already: nothing runs it
                self._task.cancel()

    async def deliver(self, entries: list[OutboxEntry]) -> bool:
        """Send the entries' items to the recommender; a failure schedules each entry's retry, with back-off."""
        if not entries:
            return True
        items = [ItemIn.model_validate(e.payload) for e in entries if e.kind == "register_item"]
        config, catalog = self.config(), self.catalog()
        service = STAGES["recommendations"]
        try:
            limit = config.timeouts_s.recommendations
            await call(lambda _: self.recommend.add_items.remote(items), service, limit, config.retries)
        except ServiceError as exc:
            for entry in entries:
                wait = min(config.relay.max_retry_s, config.relay.retry_s * 2**entry.attempts)
                await asyncio.to_thread(catalog.failed, entry, exc.message, wait)
            return False
        await asyncio.to_thread(catalog.delivered, [e.id for e in entries])
        return True

    async def deliver_due(self) -> int:
        """Deliver the entries that are due (claimed, so another replica's relay skips them); how many."""
        relay = self.config().relay
        entries = await asyncio.to_thread(self.catalog().claim_due, relay.batch, relay.claim_s)
        return len(entries) if entries and await self.deliver(entries) else 0

    async def _loop(self) -> None:
        while True:
            delivered = 0
            try:
                delivered = await self.deliver_due()
            except Unavailable:
                logger.warning("the outbox relay waits for the catalog database")
            except Exception:  # the relay must outlive a bad round
                logger.exception("outbox relay round failed")
            if delivered < self.config().relay.batch:
                await asyncio.sleep(self.config().relay.interval_s)
