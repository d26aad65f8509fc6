"""The HTTP ingress: a thin router over the model deployments, the content pipeline and their handles.

The ingress owns no model. Its FastAPI app is built in each replica (graphs/http.py) with the routes of every
family (graphs/openai/, graphs/routes/); they validate input (bad input never reaches a model) and call services
through ``Ingress.call``: the service's timeout, one retry for a request lost with a dying replica when the call
has no side effects, and failures classified once into ``ServiceError`` (503 with ``Retry-After`` when a service has
no replica to answer, 504 after its timeout). Nothing waits without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, ClassVar

from fastapi import FastAPI, Response
from pydantic import Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.common import StrictModel
from graphs.access import AccessConfig, AccessPolicy
from graphs.calls import call_service
from graphs.errors import ServiceError, classify
from graphs.experiments import Assignment, ExperimentConfig, ExperimentRouter, ExperimentStats, validate_experiments
from graphs.limits import EdgeAdmission, RateLimiter

SERVICES = ("text", "image", "voice", "recommend")


def _app_name() -> str | None:
    """The Serve application this ingress replica belongs to (None outside a replica: unit tests)."""
    try:
        return serve.get_replica_context().app_name
    except Exception:
        return None


VARIANT_HEADER = "X-Model-Variant"


class ServiceTimeouts(StrictModel):
    """Seconds the ingress waits for each service before answering 504."""

    text: float = Field(120.0, gt=0, le=3600)
    image: float = Field(120.0, gt=0, le=3600)
    voice: float = Field(120.0, gt=0, le=3600)
    recommend: float = Field(10.0, gt=0, le=3600)
    recommend_retrain: float = Field(600.0, gt=0, le=7200, description="An admin retrain of the recommender.")
    pipeline: float = Field(600.0, gt=0, le=7200, description="Whole content requests (stages time out inside).")


class IngressConfig(StrictModel):
    """Configuration of the ingress deployment (its ``user_config``)."""

    timeouts_s: ServiceTimeouts = Field(default_factory=ServiceTimeouts, description="Per-service timeouts.")
    health_timeout_s: float = Field(5.0, gt=0, le=60, description="How long /v1/health waits for each service.")
    retry_after_s: int = Field(5, ge=1, le=600, description="`Retry-After` sent with 503 answers.")
    max_batch_events: int = Field(1000, ge=1, le=100_000, description="Most events in one batch ingestion.")
    retries: int = Field(
        2,
        ge=0,
        le=5,
        description="Times a request lost with a dying replica is sent again (calls without effects, and content "
        "requests, which are idempotent by key).",
    )
    access: AccessConfig = Field(default_factory=AccessConfig, description="API keys, CORS, body size limit.")
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict,
        description="A/B experiments by name: variants (deployments) of one service and their traffic weights.",
    )


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """Routes HTTP to the services; holds their handles, its config, the experiment router and access policy."""

    services: ClassVar[tuple[str, ...]] = SERVICES

    def __init__(
        self,
        text: DeploymentHandle,
        image: DeploymentHandle,
        voice: DeploymentHandle,
        recommend: DeploymentHandle,
        pipeline: DeploymentHandle,
        config: dict[str, Any] | None = None,
        variants: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self.handles: dict[str, DeploymentHandle] = {
            "text": text,
            "image": image,
            "voice": voice,
            "recommend": recommend,
            "pipeline": pipeline,
            **(variants or {}),  # experiment variants: extra deployments of a service, by deployment name
        }
        self.variant_deployments = tuple(variants or {})
        self.stats = ExperimentStats()
        self.admission = EdgeAdmission(_app_name(), tuple(self.handles), IngressConfig().retry_after_s)
        self.reconfigure(config or {})

    def __serve_build_asgi_app__(self) -> FastAPI:
        from graphs.http import create_app

        return create_app(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = IngressConfig.model_validate(user_config or {})
        validate_experiments(config.experiments, set(self.handles) - {"recommend", "pipeline"})
        self.config = config
        self.router = ExperimentRouter(config.experiments)
        # Serve constructs the replica, then passes its user_config here: until then (and for a deployment given
        # none) every /v1 route is closed. With a config and no keys, unless anonymous: NoKeys, the replica
        # does not start.
        self.access = AccessPolicy.from_config(config.access) if user_config else AccessPolicy.closed()
        if getattr(self, "limiter", None) is None or self.limiter.config != config.access.limits:
            self.limiter = RateLimiter(config.access.limits)
        self.admission.retry_after_s = config.retry_after_s

    async def check_health(self) -> None:
        """Serve's periodic health check (it runs on the replica's event loop, soon after start): the edge starts
        reading the services' capacities here, so the first burst after a start is capped like any later one."""
        self.admission.start()

    # --- calling services ---------------------------------------------------------------------------------
    async def call(
        self,
        service: str,
        method: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = True,
        deployment: str | None = None,
        admit: bool = True,
    ) -> Any:
        """Call one service method (on ``deployment``, an experiment variant, when given) with the service's
        timeout, retrying lost requests if it has no effects; failures raise ``ServiceError``."""
        handle = getattr(self.handles[deployment or service], method)
        return await self.call_with(
            lambda: handle.remote(*args),
            service,
            timeout=timeout,
            retries=self.config.retries if idempotent else 0,
            deployment=deployment,
            admit=admit,
        )

    async def call_with(
        self,
        send: Callable[[], Any],
        service: str,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        deployment: str | None = None,
        admit: bool = True,
    ) -> Any:
        """``call`` for a caller that makes each attempt itself (``send()`` returns a DeploymentResponse), e.g.
        a resend that differs from the first attempt. A deployment at capacity is refused here, at once (unless
        ``admit`` is false: the caller holds the request's place, see ``admitted``)."""
        limit = timeout if timeout is not None else getattr(self.config.timeouts_s, service)
        retries = self.config.retries if retries is None else retries
        try:
            with self.admitted(deployment or service) if admit else contextlib.nullcontext():
                return await call_service(send, service, limit, retries)
        except ServiceError as exc:
            raise self._answerable(exc) from None

    def admitted(self, deployment: str) -> contextlib.AbstractContextManager[None]:
        """One place at the edge for one HTTP request, however many calls it fans out to (prompts x choices)."""
        self.admission.start()
        return self.admission.enter(deployment)

    def _answerable(self, error: ServiceError) -> ServiceError:
        if error.status_code == 503:
            error.headers.setdefault("Retry-After", str(self.config.retry_after_s))
        return error

    async def open_streams(
        self, service: str, method: str, requests: list[Any], assignment: Assignment | None
    ) -> list[tuple[Any, Any]]:
        """Start one stream per request and await each one's first item (the request was accepted); on any
        failure every stream is cancelled and the failure raised, so a rejected request gets its 4xx."""
        limit = getattr(self.config.timeouts_s, service)
        deployment = assignment.deployment if assignment else service
        handle = getattr(self.handles[deployment].options(stream=True), method)
        started = time.perf_counter()
        streams: list[Any] = []
        try:
            with self.admitted(deployment):  # a place is held while the streams open
                streams = [handle.remote(r) for r in requests]
                firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in streams)), timeout=limit)
        except Exception as exc:
            for stream in streams:
                stream.cancel()
            error = self._answerable(classify(exc, service, limit))
            self.count(assignment, time.perf_counter() - started, error.status_code < 500)
            raise error from None
        self.count(assignment, time.perf_counter() - started, True)  # streams count by time to first item
        return list(zip(streams, firsts, strict=True))

    # --- experiments --------------------------------------------------------------------------------------
    def route(self, service: str, request: Any, user_id: str | None) -> tuple[Any, Assignment | None]:
        """The experiment variant for a request, and the request as that variant's deployment takes it."""
        assignment = self.router.assign(service, user_id, getattr(request, "model", None))
        if assignment is not None:
            request = request.model_copy(update={"model": None})  # the variant serves its own model
        return request, assignment

    def route_all(self, service: str, requests: list[Any], user_id: str | None) -> tuple[list[Any], Assignment | None]:
        """``route`` for requests that belong together (the prompts of one completion): one variant for all."""
        first, assignment = self.route(service, requests[0], user_id)
        if assignment is None:
            return requests, None
        return [first, *(r.model_copy(update={"model": None}) for r in requests[1:])], assignment

    def count(self, assignment: Assignment | None, seconds: float, ok: bool) -> None:
        from deployments.telemetry import telemetry

        if assignment is None:
            return
        self.stats.record(assignment, seconds, ok)
        outcome = "ok" if ok else "error"
        telemetry.count("content_studio_experiment_requests", outcome=outcome, **assignment.tag())
        telemetry.observe("content_studio_experiment_request_seconds", seconds, **assignment.tag())

    @staticmethod
    def variant_headers(assignment: Assignment | None) -> dict[str, str]:
        return {VARIANT_HEADER: assignment.variant} if assignment is not None else {}

    def tag(self, response: Response | None, assignment: Assignment | None) -> None:
        if response is not None and assignment is not None:
            response.headers[VARIANT_HEADER] = assignment.variant

    async def call_routed(
        self, service: str, method: str, request: Any, user_id: str | None, response: Response | None
    ) -> tuple[Any, Assignment | None]:
        """``call`` through the service's experiment (if any); counts the variant's requests, errors, latency."""
        request, assignment = self.route(service, request, user_id)
        started, ok = time.perf_counter(), False
        try:
            result = await self.call(service, method, request, deployment=assignment and assignment.deployment)
            ok = True
        except ServiceError as exc:
            ok = exc.status_code < 500  # the caller's mistake is no mark against the variant
            raise
        finally:
            self.count(assignment, time.perf_counter() - started, ok)
        self.tag(response, assignment)
        return result, assignment

    # --- health -------------------------------------------------------------------------------------------
    def describe_self(self) -> dict[str, Any]:
        """This ingress replica: who may call, whether rate limits are shared across replicas (Redis), and what
        it admits to each deployment."""
        return {
            "access": "anonymous" if self.access.anonymous else f"{len(self.access.entries)} keys",
            "rate_limits": self.limiter.describe(),
            "admission": self.admission.describe(),
        }

    async def describe_all(self) -> dict[str, dict[str, Any]]:
        async def one(name: str) -> dict[str, Any]:
            try:
                return await self.call(name, "describe", timeout=self.config.health_timeout_s, deployment=name)
            except ServiceError as exc:
                return {"service": name, "status": "unavailable", "error": exc.message}

        names = (*self.services, *self.variant_deployments)
        results = await asyncio.gather(*(one(name) for name in names))
        return dict(zip(names, results, strict=True))
