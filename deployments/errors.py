"""One error family for everything a request can meet, from a model replica to the edge.

``ServiceError`` carries what a caller needs to act: the HTTP ``status``, OpenAI's error ``error_type``, a
message, the request ``param`` at fault, and ``retry_after_s`` for failures that pass. Services raise its
subclasses, one per meaning (``InvalidRequest``, ``NotFound``, ``Conflict``, ``BadOutput``, ``Unavailable``,
``ServiceTimeout``; the edge adds its own refusals: ``Unauthorized``, ``Forbidden``, ``RateLimited``).
``from_exception`` maps whatever awaiting a service call raised (one of ours, one of Ray's, a timeout) onto the
family, once; ``body`` is the one place that writes the error's JSON (OpenAI's shape).

A failure that is none of these (a bug, an injected fault) stays what it is and becomes a 500 naming its type.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class ServiceError(Exception):
    """A failed request. ``record`` is what a content request made before it failed (answered with the error)."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False  # the same request may succeed later: the edge adds a `Retry-After`

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        code: str | None = None,
        retry_after_s: float | None = None,
        record: Any = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.retry_after_s, self.record = retry_after_s, record

    @classmethod
    def for_field(cls, param: str, detail: str, **options: Any) -> ServiceError:
        """The error of request field ``param``: its message starts with the field's name."""
        return cls(f"{param}: {detail}", param, **options)

    def __reduce__(self) -> tuple[Any, ...]:  # every field survives Ray pickling the error back to the caller
        return (_restore, (type(self), self.message, dict(self.__dict__)))

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    def with_record(self, record: Any) -> ServiceError:
        """The same failure, carrying the record of what was made before it."""
        self.record = record
        return self


def _restore(cls: type[ServiceError], message: str, state: dict[str, Any]) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidRequest(ServiceError):
    """A request the service cannot serve as asked (a limit of the model or its config); ``param`` names the field."""

    status = 400
    error_type = "invalid_request_error"


class SchemaError(InvalidRequest):
    """A request that does not match the schema (a type, a bound, an unknown field)."""

    status = 422


class TooLarge(InvalidRequest):
    status = 413
    error_type = "request_too_large"


class Unauthorized(ServiceError):
    status = 401
    error_type = "authentication_error"


class Forbidden(ServiceError):
    status = 403
    error_type = "permission_error"


class NotFound(ServiceError):
    """An unknown model, content, item or route."""

    status = 404
    error_type = "invalid_request_error"


class Conflict(ServiceError):
    """Conflicts with work in progress (a retrain running, a content still being made)."""

    status = 409
    error_type = "conflict"
    retryable = True


class RateLimited(ServiceError):
    status = 429
    error_type = "rate_limit_exceeded"
    retryable = True


class BadOutput(ServiceError):
    """The model answered, but with nothing usable (an empty article): not the caller's fault."""

    status = 502
    error_type = "bad_gateway"


class Unavailable(ServiceError):
    """No capacity or no replica now: a full queue, a replica without a model, a database that is down."""

    status = 503
    error_type = "service_unavailable"
    retryable = True


class ServiceTimeout(ServiceError):
    status = 504
    error_type = "timeout"


FAMILY: tuple[type[ServiceError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    SchemaError,
    RateLimited,
    ServiceError,
    BadOutput,
    Unavailable,
    ServiceTimeout,
)


def for_status(status: int, message: str, param: str | None = None) -> ServiceError:
    """A refusal the web framework made by status (an unknown path, a method the path has not): the member of
    the family with that status, or the nearest kind (a 4xx is the caller's, a 5xx the server's) carrying it."""
    kind = next((cls for cls in FAMILY if cls.status == status), InvalidRequest if status < 500 else ServiceError)
    error = kind(message, param)
    error.status = status  # type: ignore[misc]  # the same as the class's, or the framework's own status
    return error


# --- Ray's exceptions, mapped once ---------------------------------------------------------------------------
def _lost_with_replica() -> tuple[type[BaseException], ...]:
    """The request was lost with its replica (killed, out of memory, its node gone), not refused."""
    from ray import exceptions as ray_exc

    return (ray_exc.RayActorError, ray_exc.ActorUnavailableError, ray_exc.WorkerCrashedError, ray_exc.NodeDiedError)


def _no_replica() -> tuple[type[BaseException], ...]:
    """Serve could not hand the request to a replica: the deployment is full, or has none running."""
    from ray.serve import exceptions as serve_exc

    return (serve_exc.BackPressureError, serve_exc.DeploymentUnavailableError, serve_exc.ReplicaUnavailableError)


def _over_message_cap(exc: BaseException) -> bool:
    """A call by value (over a replica's gRPC server) whose request or answer was larger than Serve's cap on a
    gRPC message (``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``, 4 MB unless the profile raises it)."""
    import grpc

    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def cause_of(exc: BaseException) -> BaseException:
    """The error raised in the replica (Ray wraps it: ``.cause``), or ``exc`` itself."""
    return getattr(exc, "cause", None) or exc


def replica_died(exc: BaseException) -> bool:
    """Lost with its replica: safe to send again when the call has no effects (or is idempotent by key)."""
    return isinstance(cause_of(exc), _lost_with_replica()) or isinstance(exc, _lost_with_replica())


def from_exception(exc: BaseException, service: str, timeout_s: float | None = None) -> ServiceError:
    """What awaiting a call to ``service`` raised, as a member of the family (the message names the service)."""
    cause = cause_of(exc)
    if isinstance(cause, ServiceError):  # raised by the service itself (or classified downstream)
        return cause
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        limit = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return ServiceTimeout(f"the {service} service did not answer{limit}")
    if isinstance(cause, _lost_with_replica() + _no_replica()) or isinstance(exc, _lost_with_replica()):
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        return Unavailable(f"the {service} service is unavailable: {detail}"[:500])
    if _over_message_cap(cause):
        return ServiceError(
            f"the {service} service's request or answer is larger than a call by value may carry: raise "
            "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH in the application's runtime_env (docs/edge.md)"
        )
    return ServiceError(f"the {service} service failed: {type(cause).__name__}: {cause}"[:500])
