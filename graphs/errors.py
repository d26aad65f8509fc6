"""How failures of a service call are told apart, so the ingress and the pipeline answer them the same way."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.common import ModelOutputError, RequestError, ServiceNotReady


@dataclass(frozen=True)
class CallFailure:
    """A failed service call, classified: the HTTP status it deserves, a message, and the field at fault."""

    status_code: int
    message: str
    field: str | None = None
    kind: str = "server_error"


def is_unavailable(exc: BaseException) -> bool:
    """Ray's ways of saying that no replica could take the request."""
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    unavailable = (
        serve_exc.BackPressureError,
        serve_exc.DeploymentUnavailableError,
        serve_exc.ReplicaUnavailableError,
        ray_exc.RayActorError,
        ray_exc.ActorUnavailableError,
        ray_exc.NodeDiedError,
        ray_exc.WorkerCrashedError,
        ServiceNotReady,
    )
    return isinstance(exc, unavailable) or isinstance(getattr(exc, "cause", None), unavailable)


def classify(exc: BaseException, service: str, timeout_s: float | None = None) -> CallFailure:
    """Map an exception raised by awaiting a call to ``service`` onto a ``CallFailure``."""
    cause = getattr(exc, "cause", None) or exc  # Ray wraps errors raised in replicas; the cause is the real one
    if isinstance(getattr(cause, "failure", None), CallFailure):  # already classified downstream
        return cause.failure
    if isinstance(cause, RequestError):
        return CallFailure(cause.status_code, f"{cause.field}: {cause.message}", cause.field, "invalid_request_error")
    if isinstance(cause, ModelOutputError):
        return CallFailure(502, f"the {service} service gave no usable output: {cause}", None, "bad_gateway")
    if isinstance(exc, TimeoutError):
        limit = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return CallFailure(504, f"the {service} service did not answer{limit}", None, "timeout")
    if is_unavailable(exc):
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return CallFailure(503, f"the {service} service is unavailable: {detail}", None, "service_unavailable")
    return CallFailure(500, f"the {service} service failed: {type(cause).__name__}: {cause}"[:500], None)
