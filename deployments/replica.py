"""The thin Ray Serve layer shared by the model services.

A service's configuration is its deployment's ``user_config``. Serve hands it to ``reconfigure`` when a replica
starts and again whenever the Serve config changes it (``serve deploy``), so one code path loads the first model
and swaps in later versions: a change of model source, device or dtype loads a new model beside the old one and
swaps the reference once it is ready (requests in flight finish on the old one); any other change (generation
defaults, limits) is applied to the loaded model without reloading weights.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from deployments.common import InjectedFault, Placement, ServiceConfig
from deployments.errors import ServiceError, Unavailable
from deployments.telemetry import telemetry


class ServiceModel(Protocol):
    """What the replica needs from a service's plain class (the loaded model and what serves it)."""

    config: Any
    placement: Placement

    def apply_config(self, config: Any) -> None: ...

    def check_health(self) -> Any: ...  # may be a coroutine function

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...  # stop background work; requests already running may finish


ConfigT = TypeVar("ConfigT", bound=ServiceConfig)
ModelT = TypeVar("ModelT", bound=ServiceModel)
ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")
logger = logging.getLogger("content_studio.replica")


def config_version(config: ServiceConfig) -> str:
    """A short, stable fingerprint of a config (never Python's salted ``hash``)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:12]


class ModelReplica(Generic[ConfigT, ModelT]):
    """Base for the Serve deployment classes: holds one loaded model, swaps it on ``reconfigure``."""

    service: ClassVar[str]
    config_cls: ClassVar[type[ServiceConfig]]
    # Config fields whose change needs new weights; anything else is applied in place.
    reload_fields: ClassVar[frozenset[str]] = frozenset({"model", "device", "dtype"})
    # Whether the model applies ``faults.stream_delay_s`` itself (the text service: a token at a time, so that a
    # stream behind its engine still sends what is ready in one message); else a pause after each streamed item.
    paces_own_streams: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any] | None = None, model: ModelT | None = None) -> None:
        self._model: ModelT | None = model
        self._loaded_at: float | None = time.time() if model is not None else None
        self._reloads = 0
        self._served = 0  # requests since the config was last applied (for ``faults.fail_after``)
        self._outcomes: dict[str, dict[str, int]] = {}  # method -> outcome -> requests, since the replica started
        if model is None and config is not None:
            self._install(self.load_model(self.config_cls.model_validate(config)))
        if self._model is not None:
            self.configured(self._model.config)

    # --- subclasses -----------------------------------------------------------------------------------
    def load_model(self, config: ConfigT) -> ModelT:
        raise NotImplementedError

    def configured(self, config: ConfigT) -> None:
        """Called with every config applied (e.g. to size ``@serve.batch`` methods in place)."""

    # --- Serve hooks ----------------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = self.config_cls.model_validate(user_config)
        self.configured(config)
        self._served = 0
        current = self._model
        if current is not None and not self._needs_reload(current.config, config):
            await asyncio.to_thread(current.apply_config, config)  # may restart background work; keep serving
            return
        # Load off the event loop so that the old model keeps answering while the new one loads.
        self._install(await asyncio.to_thread(self.load_model, config))

    async def check_health(self) -> None:
        """Serve's periodic probe: the model must answer (each service runs a tiny real inference)."""
        model = self.model
        if model.config.faults.fail_health_checks:
            raise InjectedFault(f"injected health check failure in the {self.service} service")
        if inspect.iscoroutinefunction(model.check_health):
            await model.check_health()
        else:
            await asyncio.to_thread(model.check_health)

    async def run(self, fn: Callable[..., ResultT], *args: Any) -> ResultT:
        """Run a blocking model call off the event loop, after any configured fault injection, and record
        its metrics."""
        return await self.measure(getattr(fn, "__name__", "call"), args, lambda: asyncio.to_thread(fn, *args))

    async def measure(self, method: str, args: tuple[Any, ...], work: Callable[[], Awaitable[ResultT]]) -> ResultT:
        """Await ``work()`` after fault injection, recording the request's metrics (a stream of one result)."""

        async def once() -> AsyncIterator[ResultT]:
            yield await work()

        (result,) = [item async for item in self.measure_stream(method, args, once, object)]
        return result

    async def measure_stream(
        self, method: str, args: tuple[Any, ...], items: Callable[[], AsyncIterator[ItemT]], final: type
    ) -> AsyncIterator[ItemT]:
        """``measure`` for a stream: counted once it ends (``ok`` when its last item, of type ``final``,
        came; ``cancelled`` when the consumer left first), its final item observed like a result."""
        started = time.perf_counter()
        outcome = "error"
        try:
            await self.inject_faults()
            pause = 0.0 if self.paces_own_streams else self.model.config.faults.stream_delay_s
            async for item in items():
                if isinstance(item, final):
                    outcome = "ok"
                    self._observe(method, args, item, time.perf_counter() - started)
                yield item
                if pause and not isinstance(item, final):
                    await asyncio.sleep(pause)
        except ServiceError as exc:
            outcome = "client_error" if exc.status < 500 else "error"
            raise
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        finally:
            self._count(method, outcome, time.perf_counter() - started)

    def _observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        try:
            self.observe(method, args, result, seconds)
        except Exception:  # metrics must never fail a request
            logger.warning("recording metrics for %s.%s failed", self.service, method, exc_info=True)

    def _count(self, method: str, outcome: str, seconds: float) -> None:
        by_outcome = self._outcomes.setdefault(method, {})
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        telemetry.count("content_studio_requests", service=self.service, method=method, outcome=outcome)
        telemetry.observe("content_studio_request_seconds", seconds, service=self.service, method=method)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        """Record a service's own metrics for a successful call (tokens, images, audio seconds...)."""

    async def inject_faults(self) -> None:
        faults = self.model.config.faults
        if faults.delay_s:
            await asyncio.sleep(faults.delay_s)
        if faults.error_rate and random.random() < faults.error_rate:
            raise InjectedFault(f"injected fault in the {self.service} service (faults.error_rate)")
        self._served += 1
        if faults.fail_after is not None and self._served > faults.fail_after:
            raise InjectedFault(f"injected fault in the {self.service} service (faults.fail_after)")

    # --- shared methods -------------------------------------------------------------------------------
    @property
    def model(self) -> ModelT:
        if self._model is None:
            raise Unavailable(f"the {self.service} service has no model: give it a user_config with at least `model`")
        return self._model

    async def describe(self) -> dict[str, Any]:
        """Model, device and placement of this replica, for /v1/health and /v1/models."""
        model = self.model
        return {
            "service": self.service,
            "status": "ok",
            "model": model.config.name,
            "source": model.config.model,
            "config_version": config_version(model.config),
            "loaded_at": self._loaded_at,
            "reloads": self._reloads,
            "requests": {method: dict(outcomes) for method, outcomes in self._outcomes.items()},
            **model.placement.as_dict(),
            **model.describe(),
        }

    def _needs_reload(self, old: ServiceConfig, new: ServiceConfig) -> bool:
        return any(getattr(old, f) != getattr(new, f) for f in self.reload_fields)

    def _install(self, model: ModelT) -> None:
        old = self._model
        if old is not None:
            self._reloads += 1
            old.close()  # stops the old model's background work (requests may still finish)
        self._model = model
        self._loaded_at = time.time()
