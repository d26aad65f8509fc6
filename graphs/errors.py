"""One error type for everything that can go wrong behind the ingress, classified once and answered at the edge.

``ServiceError`` carries the HTTP status a failure deserves, a message, the request field at fault and the OpenAI
error ``type``. Services raise ``RequestError`` (deployments/common.py) for requests they cannot serve; whatever
a service call raises (a ``RequestError``, a timeout, a dead replica, backpressure) is mapped onto a
``ServiceError`` by ``classify``; the ingress turns it into ``{"error": {...}}`` in one exception handler.
"""

from __future__ import annotations

from typing import Any

from deployments.common import ModelOutputError, RequestError, ServiceNotReady


class ServiceError(Exception):
    """A failed request: ``status_code``, ``message``, ``field`` (the request field at fault) and ``kind`` (the
    OpenAI error type). ``record`` is what a content request made before failing (answered with the error)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        field: str | None = None,
        kind: str = "server_error",
        headers: dict[str, str] | None = None,
        record: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.message, self.field, self.kind = status_code, message, field, kind
        self.headers: dict[str, str] = dict(headers or {})
        self.record = record

    def __reduce__(self):  # keep every field when Ray pickles the error back to the caller
        return (type(self), (self.status_code, self.message, self.field, self.kind, self.headers, self.record))

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.field, self.kind)


def error_body(message: str, field: str | None, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


def invalid(field: str, message: str, status_code: int = 400) -> ServiceError:
    """A request the ingress itself refuses."""
    return ServiceError(status_code, f"{field}: {message}", field, "invalid_request_error")


def replica_died(exc: BaseException) -> bool:
    """The request was lost with its replica (not rejected): safe to send again when the call has no effects."""
    from ray import exceptions as ray_exc

    died = (ray_exc.RayActorError, ray_exc.ActorUnavailableError, ray_exc.WorkerCrashedError, ray_exc.NodeDiedError)
    return isinstance(exc, died) or isinstance(getattr(exc, "cause", None), died)


def is_unavailable(exc: BaseException) -> bool:
    """Ray's (and the engines') ways of saying that no replica could take the request now."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    from deployments.sql import StoreUnavailable
    from deployments.text.engine import EngineFailed, EngineOverloaded

    unavailable = (
        serve_exc.BackPressureError,
        serve_exc.DeploymentUnavailableError,
        serve_exc.ReplicaUnavailableError,
        ray_exc.RayActorError,
        ray_exc.ActorUnavailableError,
        ray_exc.NodeDiedError,
        ray_exc.WorkerCrashedError,
        ServiceNotReady,
        EngineOverloaded,
        EngineFailed,
        StoreUnavailable,
    )
    return isinstance(exc, unavailable) or isinstance(getattr(exc, "cause", None), unavailable)


def classify(exc: BaseException, service: str, timeout_s: float | None = None) -> ServiceError:
    """Map an exception raised by awaiting a call to ``service`` onto a ``ServiceError``."""
    cause = getattr(exc, "cause", None) or exc  # Ray wraps errors raised in replicas; the cause is the real one
    if isinstance(cause, ServiceError):  # already classified downstream (e.g. by the pipeline)
        return cause
    if isinstance(cause, RequestError):
        return ServiceError(cause.status_code, f"{cause.field}: {cause.message}", cause.field, "invalid_request_error")
    if isinstance(cause, ModelOutputError):
        return ServiceError(502, f"the {service} service gave no usable output: {cause}", None, "bad_gateway")
    if isinstance(exc, TimeoutError):
        limit = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return ServiceError(504, f"the {service} service did not answer{limit}", None, "timeout")
    if is_unavailable(exc):
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        error = ServiceError(503, f"the {service} service is unavailable: {detail}", None, "service_unavailable")
        retry_after = getattr(cause, "retry_after_s", None)
        if retry_after is not None:
            error.headers["Retry-After"] = str(max(1, round(retry_after)))
        return error
    return ServiceError(500, f"the {service} service failed: {type(cause).__name__}: {cause}"[:500], None)
