"""The ingress: a thin router over the model services, the content pipeline and their handles.

The ingress owns no model. Its routes (edge/routes/, edge/openai/) validate input (bad input never reaches a
model) and reach services through two verbs: ``call`` (a service method with the service's timeout, one place at
the edge, a resend when a replica died with a request that may be sent again, failures as ``ServiceError``) and
``call_variant`` (the same on the caller's experiment variant, counted per variant). Nothing waits without bound.
The Serve deployment around it is edge/deployment.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from fastapi import Response
from pydantic import Field
from ray.serve.handle import DeploymentHandle

from deployments.calls import call
from deployments.common import StrictModel
from deployments.errors import NotFound, ServiceError, from_exception
from deployments.registry import MODEL_SERVICES, PIPELINE, VARIANT_SERVICES, CallHandles
from edge.access import AccessConfig, AccessPolicy
from edge.admission import EdgeAdmission
from edge.experiments import (
    Assignment,
    ExperimentConfig,
    ExperimentRouter,
    ExperimentStats,
    report,
    validate_experiments,
)
from edge.rate_limits import RateLimiter
from edge.response_store import ResponsesConfig, ResponseStore
from graphs.jobs import JobsConfig
from graphs.jobs.board import JobBoard

VARIANT_HEADER = "X-Model-Variant"


class ServiceTimeouts(StrictModel):
    """Seconds the ingress waits for each service before answering 504."""

    text: float = Field(120.0, gt=0, le=3600)
    image: float = Field(120.0, gt=0, le=3600)
    voice: float = Field(120.0, gt=0, le=3600)
    recommend: float = Field(10.0, gt=0, le=3600)
    embed: float = Field(60.0, gt=0, le=3600)
    recommend_retrain: float = Field(600.0, gt=0, le=7200, description="An admin retrain of the recommender.")
    pipeline: float = Field(600.0, gt=0, le=7200, description="Whole content requests (stages time out inside).")


class IngressConfig(StrictModel):
    """Configuration of the ingress deployment (its ``user_config``)."""

    timeouts_s: ServiceTimeouts = Field(default_factory=ServiceTimeouts, description="Per-service timeouts.")
    health_timeout_s: float = Field(5.0, gt=0, le=60, description="How long /v1/health waits for each service.")
    retry_after_s: int = Field(5, ge=1, le=600, description="`Retry-After` of answers that may succeed later.")
    capacity_refresh_s: float = Field(
        5.0, gt=0, le=600, description="How often the edge reads the services' capacity from the Serve controller."
    )
    max_batch_events: int = Field(1000, ge=1, le=100_000, description="Most events in one batch ingestion.")
    retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Times a request lost with a dying replica is sent again (calls without effects, and content "
        "requests, which are idempotent by key).",
    )
    by_value_calls: bool = Field(
        True,
        description="Calls to the services that take them by value (`text`: prompts and token streams) go over "
        "their replicas' gRPC servers with results by value; false: as Ray actor tasks through the object store, "
        "Serve's default (docs/edge-measurements.md measures both).",
    )
    access: AccessConfig = Field(default_factory=AccessConfig, description="API keys, CORS, body size limit.")
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict,
        description="A/B experiments by name: variants (deployments) of one service and their traffic weights.",
    )
    responses: ResponsesConfig = Field(
        default_factory=ResponsesConfig, description="Stored responses of the Responses API (`store: true`)."
    )


class Ingress:
    """Routes HTTP to the services; holds their handles, its config, the experiment router and access policy.

    ``handles`` are the application's deployments by name: the model services it deploys, the pipeline (when
    deployed), and experiment variants (extra deployments of a service, e.g. ``text-b``)."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        config: dict[str, Any] | None = None,
        variants: tuple[str, ...] = (),
        app_name: str | None = None,
        jobs: dict[str, Any] | None = None,
    ) -> None:
        self.handles = handles
        self.calls = CallHandles(handles)
        # Content jobs (the application's ``args.jobs``): taken here, queued on the broker, made by the consumer.
        self.jobs = JobBoard(JobsConfig.model_validate(jobs)) if jobs is not None else None
        self.services = tuple(name for name in (*MODEL_SERVICES, PIPELINE) if name in handles)
        self.variant_deployments = variants
        self.stats = ExperimentStats()
        self.admission = EdgeAdmission(app_name, tuple(handles), IngressConfig())
        self.limiter: RateLimiter | None = None
        self._responses: ResponseStore | None = None
        self._responses_lock = threading.Lock()
        self.reconfigure(config or {})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = IngressConfig.model_validate(user_config or {})
        served = {name for name in self.handles if name in VARIANT_SERVICES or name in self.variant_deployments}
        validate_experiments(config.experiments, served)
        self.config = config
        self.router = ExperimentRouter(config.experiments)
        # Serve constructs the replica, then passes its user_config here: until then (and for a deployment given
        # none) every /v1 route is closed. With a config and no keys, unless anonymous: NoKeys, the replica
        # does not start.
        self.access = AccessPolicy.from_config(config.access) if user_config else AccessPolicy.closed()
        if self.limiter is None or self.limiter.config != config.access.limits:
            self.limiter = RateLimiter(config.access.limits)
        self.admission.config = config

    def response_store(self) -> ResponseStore:
        """The Responses API's store, opened on first use (from a worker thread: it may migrate its schema)."""
        with self._responses_lock:
            wanted = self.config.responses
            if self._responses is None or self._responses_config != wanted:
                if self._responses is not None:
                    self._responses.dispose()
                self._responses, self._responses_config = ResponseStore(wanted), wanted
            return self._responses

    def job_board(self) -> JobBoard:
        """Content jobs, when this application takes them (404 otherwise)."""
        if self.jobs is None:
            raise NotFound("this application takes no jobs: give it `args.jobs` (docs/jobs.md)")
        return self.jobs

    # --- calling services ---------------------------------------------------------------------------------
    def handle(self, deployment: str, service: str | None = None) -> DeploymentHandle:
        """The handle of a deployment of this application (of ``service``'s, when it is a variant); 404 for a
        service it does not deploy. A service whose calls travel by value (its ``ServiceSpec.by_value``) gets
        the handle that sends them over the replica's gRPC server."""
        found = self.calls.get(deployment, service or deployment, self.config.by_value_calls)
        if found is None:
            raise NotFound(f"the {deployment} service is not deployed in this application")
        return found

    async def call(
        self,
        service: str,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = True,
        deployment: str | None = None,
        resend_args: tuple[Any, ...] | None = None,
    ) -> Any:
        """Call one service method (on ``deployment``, an experiment variant, when given) with the service's
        timeout. A request lost with a dying replica is sent again when it has no effects (``idempotent``), with
        ``resend_args`` when a resend must differ (a content resend takes over its key); a deployment at capacity
        is refused here, at once. Failures raise ``ServiceError``."""
        target = getattr(self.handle(deployment or service, service), method)
        limit = timeout if timeout is not None else getattr(self.config.timeouts_s, service)

        def send(attempt: int) -> Any:
            return target.remote(*(resend_args if attempt and resend_args is not None else args))

        try:
            with self.admitted(deployment or service):
                return await call(send, service, limit, self.config.retries if idempotent else 0)
        except ServiceError as exc:
            raise self.answerable(exc) from None

    async def call_variant(
        self, service: str, method: str, request: Any, user_id: str | None, response: Response | None = None
    ) -> tuple[Any, Assignment | None]:
        """``call`` on the caller's experiment variant of ``service`` (if it runs one), counting the variant's
        requests, errors and latency; ``request`` may be a list (the prompts of one completion: one variant)."""
        request, assignment = self.route(service, request, user_id)
        started, ok = time.perf_counter(), False
        try:
            result = await self.call(service, method, request, deployment=assignment and assignment.deployment)
            ok = True
        except ServiceError as exc:
            ok = exc.status < 500  # the caller's mistake is no mark against the variant
            raise
        finally:
            self.count(assignment, time.perf_counter() - started, ok)
        if response is not None:
            response.headers.update(self.variant_headers(assignment))
        return result, assignment

    def admitted(self, deployment: str) -> contextlib.AbstractContextManager[None]:
        """One place at the edge for one HTTP request, however many calls it fans out to (prompts x choices)."""
        self.admission.start()
        return self.admission.enter(deployment)

    def answerable(self, error: ServiceError) -> ServiceError:
        """An answer that may succeed later says when to come back (the config's ``retry_after_s`` by default)."""
        if error.retryable and error.retry_after_s is None:
            error.retry_after_s = self.config.retry_after_s
        return error

    async def open_streams(
        self, service: str, method: str, requests: list[Any], assignment: Assignment | None
    ) -> list[tuple[Any, Any]]:
        """Start one stream per request and await each one's first item (the request was accepted); on any
        failure every stream is cancelled and the failure raised, so a rejected request gets its 4xx."""
        limit = getattr(self.config.timeouts_s, service)
        deployment = assignment.deployment if assignment else service
        target = getattr(self.handle(deployment, service).options(stream=True), method)
        started = time.perf_counter()
        streams: list[Any] = []
        try:
            with self.admitted(deployment):  # a place is held while the streams open
                streams = [target.remote(r) for r in requests]
                firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in streams)), timeout=limit)
        except Exception as exc:
            for stream in streams:
                stream.cancel()
            error = self.answerable(from_exception(exc, service, limit))
            self.count(assignment, time.perf_counter() - started, error.status < 500)
            raise error from None
        self.count(assignment, time.perf_counter() - started, True)  # streams count by time to first item
        return list(zip(streams, firsts, strict=True))

    # --- experiments --------------------------------------------------------------------------------------
    def route(self, service: str, request: Any, user_id: str | None) -> tuple[Any, Assignment | None]:
        """The experiment variant for a request (or the requests of one completion: one variant for all), and
        the request as that variant's deployment takes it (the variant serves its own model)."""
        requests = request if isinstance(request, list) else [request]
        assignment = self.router.assign(service, user_id, getattr(requests[0], "model", None))
        if assignment is None:
            return request, None
        routed = [r.model_copy(update={"model": None}) for r in requests]
        return (routed if isinstance(request, list) else routed[0]), assignment

    def count(self, assignment: Assignment | None, seconds: float, ok: bool) -> None:
        if assignment is not None:
            self.stats.record(assignment.experiment, assignment.variant, seconds, ok)

    @staticmethod
    def variant_headers(assignment: Assignment | None) -> dict[str, str]:
        return {VARIANT_HEADER: assignment.variant} if assignment is not None else {}

    # --- health -------------------------------------------------------------------------------------------
    def experiments_here(self) -> dict[str, Any]:
        """This replica's experiment report, without the pipeline's engagement: what a caller reading every ingress
        replica through a handle adds up (``GET /v1/experiments`` answers from the replica the proxy picks, and
        the proxy prefers its own node's)."""
        stats = self.stats
        return report(self.config.experiments, stats.snapshot(), {}, stats.since, stats.replica).model_dump()

    def describe_self(self) -> dict[str, Any]:
        """This ingress replica: who may call, whether rate limits are shared across replicas (Redis), and what
        it admits to each deployment."""
        return {
            "access": "anonymous" if self.access.anonymous else f"{len(self.access.entries)} keys",
            "rate_limits": self.limiter.describe() if self.limiter else None,
            "admission": self.admission.describe(),
        }

    async def describe_all(self) -> dict[str, dict[str, Any]]:
        async def one(name: str) -> dict[str, Any]:
            try:
                return await self.call(name, "describe", timeout=self.config.health_timeout_s, deployment=name)
            except ServiceError as exc:
                return {"service": name, "status": "unavailable", "error": exc.message}

        names = (*(s for s in self.services if s != PIPELINE), *self.variant_deployments)
        results = await asyncio.gather(*(one(name) for name in names))
        return dict(zip(names, results, strict=True))
