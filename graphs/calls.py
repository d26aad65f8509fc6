"""Calling a service through its handle: a timeout that always holds, and one retry when a replica died.

A replica that dies mid-request (killed, out of memory, its node gone) fails the requests it held; Serve
replaces it and routes new requests to live replicas, so a request that failed that way is sent again, within
what is left of its timeout. Backpressure (the deployment is full) and timeouts are not retried: they are
answered at once, 503 with ``Retry-After`` and 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from graphs.errors import CallFailure, classify

logger = logging.getLogger("content_studio.calls")


def replica_died(exc: BaseException) -> bool:
    """The request was lost with its replica (not rejected): safe to send again when the call has no effects."""
    from ray import exceptions as ray_exc

    died = (ray_exc.RayActorError, ray_exc.ActorUnavailableError, ray_exc.WorkerCrashedError, ray_exc.NodeDiedError)
    return isinstance(exc, died) or isinstance(getattr(exc, "cause", None), died)


class CallError(Exception):
    """A classified failure of a service call; ``original`` is what the service raised."""

    def __init__(self, failure: CallFailure, original: BaseException) -> None:
        super().__init__(failure.message)
        self.failure, self.original = failure, original


async def _await(response: Any) -> Any:
    return await response


async def call_service(make_call: Callable[[], Any], service: str, timeout: float, retries: int = 1) -> Any:
    """Await ``make_call()`` (a DeploymentResponse) within ``timeout`` seconds in all, retrying lost requests."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        response = make_call()
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(_await(response), timeout=max(remaining, 0.001))
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                response.cancel()
            if attempt < retries and replica_died(exc) and deadline - time.monotonic() > 0:
                attempt += 1
                logger.warning("%s: a replica died with the request; sending it again", service)
                continue
            raise CallError(classify(exc, service, timeout), getattr(exc, "cause", None) or exc) from None
