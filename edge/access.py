"""Who may call, in whose name, from where, and how much they may send: API keys with roles, CORS, a body limit.

- Keys carry a role: ``user`` (bound to one user id: whatever a request says, its events, recommendations and
  content are recorded under that id), ``service`` (a backend that acts for any user) or ``admin`` (may change
  the system: retrain the recommender). Only their SHA-256 hashes are stored: in the ingress config (hashes,
  never keys in clear), in ``$CONTENT_STUDIO_API_KEYS`` (JSON, from a Kubernetes Secret) or in a file mounted from
  a Secret (``keys_file``, re-read when it changes, so keys rotate without a restart).
- Without keys the ingress refuses to start unless ``anonymous: true`` (the local profile, bound to 127.0.0.1):
  production fails closed.
- A plain ASGI middleware in front of the app applies the policy the ingress holds (``policy()``), so keys,
  origins and limits change in place with ``serve deploy``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from deployments.common import StrictModel
from deployments.errors import ServiceError, TooLarge, Unauthorized
from deployments.recommend import ID_PATTERN

API_KEYS_ENV = "CONTENT_STUDIO_API_KEYS"
UNLIMITED = ("/v1/health",)  # probes are never rate limited
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Role = Literal["user", "service", "admin"]
logger = logging.getLogger("content_studio.access")


class ApiKeyEntry(StrictModel):
    """One API key: its name (in logs and metrics), its role, and the SHA-256 of the key (never the key)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")
    role: Role
    user_id: str | None = Field(None, pattern=ID_PATTERN, description="The user a `user` key acts as.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hashlib.sha256(key).hexdigest()")

    @model_validator(mode="after")
    def _user_keys_have_a_user(self) -> ApiKeyEntry:
        if self.role == "user" and not self.user_id:
            raise ValueError("a `user` key must name its `user_id`")
        return self


class RoleLimits(StrictModel):
    """What one key of a role may use per minute (null: no limit)."""

    requests_per_minute: int | None = Field(None, ge=1, le=10_000_000)
    tokens_per_minute: int | None = Field(None, ge=1, le=1_000_000_000, description="Generated tokens.")
    images_per_minute: int | None = Field(None, ge=1, le=1_000_000)
    audio_seconds_per_minute: float | None = Field(None, gt=0, le=10_000_000, description="Synthesized audio.")


class LimitsConfig(StrictModel):
    """Rate limits and quotas per key, by role; anonymous callers (open mode) are counted per client address."""

    user: RoleLimits = Field(
        default_factory=lambda: RoleLimits(
            requests_per_minute=120, tokens_per_minute=20_000, images_per_minute=20, audio_seconds_per_minute=600
        )
    )
    service: RoleLimits = Field(
        default_factory=lambda: RoleLimits(
            requests_per_minute=6000,
            tokens_per_minute=2_000_000,
            images_per_minute=1000,
            audio_seconds_per_minute=36000,
        )
    )
    admin: RoleLimits = Field(default_factory=RoleLimits)
    anonymous: RoleLimits = Field(default_factory=RoleLimits)
    redis_url: str | None = Field(
        None,
        description="Redis holding the counters shared by every ingress replica (`env:NAME` for a secret URL); "
        "null, or Redis unreachable: each replica counts on its own (it says so in /v1/health).",
    )

    def of(self, role: str) -> RoleLimits:
        return getattr(self, role)


class AccessConfig(StrictModel):
    """Access settings of the ingress (part of its ``user_config``)."""

    keys: list[ApiKeyEntry] = Field(default_factory=list, description="API keys by hash (never in clear).")
    keys_file: str | None = Field(
        None, description="A JSON list of key entries, e.g. mounted from a Kubernetes Secret; re-read when changed."
    )
    anonymous: bool = Field(
        False,
        description="Serve without keys. For a laptop on 127.0.0.1 only: without keys and without this, the "
        "ingress refuses to start.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000, description="Larger request bodies get 413.")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call from a browser; empty: CORS closed. `*`: any."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Rate limits and quotas per key.")


class NoKeys(RuntimeError):
    """Production fails closed: no API key is configured and anonymous access was not asked for."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name and role (or ``anonymous``), and the user a ``user`` key acts as."""

    name: str
    role: str  # user | service | admin | anonymous
    user_id: str | None = None

    def user(self, requested: str | None) -> str | None:
        """The user a request is recorded under: a ``user`` key's own, whatever the request says."""
        return self.user_id if self.role == "user" else requested

    @property
    def counter(self) -> str:
        return f"{self.role}:{self.name}"


ANONYMOUS = Principal(name="anonymous", role="anonymous")


def load_entries(config: AccessConfig, with_file: bool = True) -> list[ApiKeyEntry]:
    """Every key entry: the config's, the environment's (JSON), the keys file's."""
    entries = list(config.keys)
    raw = os.environ.get(API_KEYS_ENV, "").strip()
    if raw:
        entries += [ApiKeyEntry.model_validate(e) for e in json.loads(raw)]
    if config.keys_file and with_file:
        path = Path(config.keys_file)
        if path.exists():
            entries += [ApiKeyEntry.model_validate(e) for e in json.loads(path.read_text() or "[]")]
    return entries


@dataclass
class AccessPolicy:
    entries: list[ApiKeyEntry] = field(default_factory=list)
    anonymous: bool = True
    max_body_bytes: int = 1_000_000
    cors_origins: list[str] = field(default_factory=list)
    keys_file: str | None = None
    fixed_entries: list[ApiKeyEntry] = field(default_factory=list)  # from the config and the environment
    _by_hash: dict[str, ApiKeyEntry] = field(default_factory=dict)
    _file_stamp: float | None = None

    @classmethod
    def closed(cls) -> AccessPolicy:
        """No key opens it: what an ingress holds before its config arrives."""
        return cls([], anonymous=False)

    @classmethod
    def from_config(cls, config: AccessConfig) -> AccessPolicy:
        entries = load_entries(config)
        if not entries and not config.anonymous:
            raise NoKeys(
                "no API key is configured (access.keys, $CONTENT_STUDIO_API_KEYS or access.keys_file) and "
                "access.anonymous is not true: refusing to serve without keys"
            )
        policy = cls(entries, not entries, config.max_body_bytes, list(config.cors_origins), config.keys_file)
        policy.fixed_entries = load_entries(config, with_file=False)
        policy._index()
        return policy

    def _index(self) -> None:
        self._by_hash = {e.sha256: e for e in self.entries}
        if self.keys_file and Path(self.keys_file).exists():
            self._file_stamp = Path(self.keys_file).stat().st_mtime

    def _reload_file(self) -> None:
        """Keys rotate by editing the mounted Secret: a changed file is read again."""
        if not self.keys_file:
            return
        path = Path(self.keys_file)
        stamp = path.stat().st_mtime if path.exists() else None
        if stamp != self._file_stamp:
            try:
                from_file = [ApiKeyEntry.model_validate(e) for e in json.loads(path.read_text() or "[]")]
            except (ValueError, OSError):
                logger.exception("the keys file %s cannot be read; keeping the keys in force", path)
                return
            self.entries = [*self.fixed_entries, *from_file]  # the config's and environment's keys stay
            self._index()
            logger.info("API keys reloaded from %s: %d keys", path, len(self.entries))

    def authenticate(self, authorization: str | None, client: str | None = None) -> Principal | None:
        """The caller of a request, or None when a key is required and this one is missing or wrong."""
        if self.anonymous:
            return Principal(name=client or "anonymous", role="anonymous")
        self._reload_file()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        entry = self._by_hash.get(hash_key(token.strip()))
        return Principal(entry.name, entry.role, entry.user_id) if entry else None

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin in self.cors_origins


class AccessMiddleware:
    """Applies the current ``AccessPolicy`` (read through ``policy()`` on every request); the caller lands in
    ``request.state.principal`` for the routes."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        policy: Callable[[], AccessPolicy],
        limiter: Callable[[], Any] | None = None,
    ) -> None:
        self.app, self.policy, self.limiter = app, policy, limiter

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
        client = scope.get("client")
        principal = policy.authenticate(headers.get("authorization"), client[0] if client else None)
        if scope["path"].startswith("/v1/") and principal is None:
            missing = Unauthorized("a valid API key is required: `Authorization: Bearer <key>`", "authorization")
            await _answer(send, missing, {"WWW-Authenticate": 'Bearer realm="content-studio"'})
            return
        principal = principal or ANONYMOUS
        scope.setdefault("state", {})["principal"] = principal
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > policy.max_body_bytes:
            await _answer(send, TooLarge(f"the request body is larger than {policy.max_body_bytes} bytes", "body"))
            return
        limiter = self.limiter() if self.limiter is not None else None
        if limiter is not None and scope["path"].startswith("/v1/") and scope["path"] not in UNLIMITED:
            try:
                await limiter.admit(principal)
            except ServiceError as exc:  # over the key's rate limit or quota
                await _answer(send, exc)
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


async def _answer(send: Send, error: ServiceError, extra: dict[str, str] | None = None) -> None:
    """A refusal made before the app runs, in the error shape every route answers (``ServiceError.body``)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**error.headers(), **(extra or {})}.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
