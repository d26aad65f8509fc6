"""Who may call, from where, and how much they may send: API keys, CORS and a request body limit.

A plain ASGI middleware in front of the ingress's FastAPI app. Its settings live in an ``AccessPolicy`` that the
ingress replaces on ``reconfigure``, so keys, origins and limits change in place with ``serve deploy``.
Keys come from the ingress config or the ``CONTENT_STUDIO_API_KEYS`` environment variable (comma-separated) and
are compared in constant time; they are never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, SecretStr

from deployments.common import StrictModel

API_KEYS_ENV = "CONTENT_STUDIO_API_KEYS"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AccessConfig(StrictModel):
    """Access settings of the ingress (part of its ``user_config``)."""

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description=f"Bearer tokens accepted on /v1/*. Empty, and ${API_KEYS_ENV} unset: no key needed.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000, description="Larger request bodies get 413.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call from a browser; empty: CORS closed. `*`: any."
    )


@dataclass
class AccessPolicy:
    keys: list[bytes] = field(default_factory=list)
    max_body_bytes: int = 1_000_000
    cors_origins: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: AccessConfig) -> AccessPolicy:
        keys = [k.get_secret_value() for k in config.api_keys]
        keys += [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return cls([k.encode() for k in keys], config.max_body_bytes, list(config.cors_origins))

    def key_ok(self, authorization: str | None) -> bool:
        if not self.keys:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        return any(hmac.compare_digest(given, key) for key in self.keys)

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin in self.cors_origins


class AccessMiddleware:
    """Applies the current ``AccessPolicy`` (read through ``policy()`` on every request)."""

    def __init__(self, app: Callable[..., Awaitable[None]], policy: Callable[[], AccessPolicy]) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        cors = origin is not None and policy.origin_allowed(origin)
        if scope["method"] == "OPTIONS" and origin and "access-control-request-method" in headers:
            await self._preflight(send, origin if cors else None, headers)
            return
        send = self._with_cors(send, origin) if cors and origin else send
        if scope["path"].startswith("/v1/") and not policy.key_ok(headers.get("authorization")):
            await _error(
                send,
                401,
                "a valid API key is required: `Authorization: Bearer <key>`",
                "authorization",
                {"WWW-Authenticate": 'Bearer realm="content-studio"'},
            )
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > policy.max_body_bytes:
            await _error(send, 413, f"the request body is larger than {policy.max_body_bytes} bytes", "body")
            return
        await self.app(scope, _limited(receive, policy.max_body_bytes), send)

    async def _preflight(self, send: Send, origin: str | None, headers: dict[str, str]) -> None:
        if origin is None:  # CORS is closed to this origin: no allow headers, the browser blocks the call
            await send({"type": "http.response.start", "status": 403, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        allow = [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", headers.get("access-control-request-headers", "").encode()),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": allow})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _with_cors(send: Send, origin: str) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin.encode()),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        return wrapped


class BodyTooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    """A receive that stops a body without Content-Length (chunked) once it passes ``limit``."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        return message

    return wrapped


async def _error(send: Send, status: int, message: str, param: str, extra: dict[str, str] | None = None) -> None:
    kind = {401: "authentication_error", 413: "request_too_large"}.get(status, "invalid_request_error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
