"""Calling a deployment through its handle: a timeout that always holds, and resends when a replica died.

A replica that dies mid-request (killed, out of memory, its node gone) fails the requests it held; Serve
replaces it and routes new requests to live replicas, so a request that failed that way is sent again, within
what is left of its timeout. Backpressure (the deployment is full) and timeouts are not retried: they are
answered at once, 503 with ``Retry-After`` and 504. Every failure is raised as a ``ServiceError``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from deployments.errors import from_exception, replica_died

logger = logging.getLogger("content_studio.calls")

Send = Callable[[int], Any]  # attempt number (0 first) -> a DeploymentResponse


async def _await(response: Any) -> Any:
    return await response


async def call(send: Send, service: str, timeout: float, retries: int = 1) -> Any:
    """Await ``send(attempt)`` within ``timeout`` seconds in all, sending again (``attempt`` 1, 2, ...) when the
    replica died with the request, at most ``retries`` times."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        response = send(attempt)
        remaining = deadline - time.monotonic()
        try:
            return await asyncio.wait_for(_await(response), timeout=max(remaining, 0.001))
        except asyncio.CancelledError:  # the caller gave up (its client left): so does the replica
            response.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                response.cancel()
            if attempt < retries and replica_died(exc) and deadline - time.monotonic() > 0:
                attempt += 1
                logger.warning("%s: a replica died with the request; sending it again (%d)", service, attempt)
                # Serve routes the resend to a live replica, or holds it until the replacement is ready; a short
                # pause keeps a resend from meeting the dying replica again.
                await asyncio.sleep(min(0.1 * 2**attempt, max(0.0, deadline - time.monotonic())))
                continue
            raise from_exception(exc, service, timeout) from None
