"""Rate limits and quotas per key: requests, generated tokens, images and audio seconds per key and minute.

Limits are per role (``access.limits``), counted in Redis so that every ingress replica sees the same counts;
over a limit is 429 with ``Retry-After`` (the end of the minute) in OpenAI's error shape. Without Redis each
replica counts on its own, and says so (/v1/health, the log).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Any

from deployments.errors import RateLimited
from edge.access import LimitsConfig, Principal

logger = logging.getLogger("content_studio.limits")
WINDOW_S = 60  # limits are per minute: the window is what "per minute" means
KINDS = {"tokens": "tokens_per_minute", "images": "images_per_minute", "audio_s": "audio_seconds_per_minute"}


class _LocalCounters:
    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)

    async def incr(self, key: str, amount: float) -> float:
        self.counts[key] += amount
        if len(self.counts) > 100_000:  # drop past windows
            current = str(int(time.time() // WINDOW_S))
            self.counts = defaultdict(float, {k: v for k, v in self.counts.items() if f":{current}:" in k})
        return self.counts[key]

    async def get(self, key: str) -> float:
        return self.counts.get(key, 0.0)


class _RedisCounters:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    async def incr(self, key: str, amount: float) -> float:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(key, amount)
            pipe.expire(key, WINDOW_S * 2)
            value, _ = await pipe.execute()
        return float(value)

    async def get(self, key: str) -> float:
        value = await self.client.get(key)
        return float(value or 0.0)


class RateLimiter:
    """Per-key, per-minute counters of requests and of what was generated."""

    def __init__(self, config: LimitsConfig) -> None:
        from deployments.sql import resolve_url

        self.config = config
        self.local = _LocalCounters()
        self.redis: _RedisCounters | None = None
        self.reason = "no redis_url is configured"
        self._redis_down_until = 0.0
        if config.redis_url:
            try:
                self.redis = _RedisCounters(resolve_url(config.redis_url))
                self.reason = ""
            except Exception as exc:  # a bad URL: count locally, and say why
                self.reason = f"redis_url cannot be used: {exc}"

    def describe(self) -> dict[str, Any]:
        shared = self.redis is not None and time.monotonic() >= self._redis_down_until
        return {"backend": "redis" if shared else "local", "shared": shared, "note": self.reason or None}

    async def _counter(self, op: str, key: str, amount: float = 0.0) -> float:
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await (self.redis.incr(key, amount) if op == "incr" else self.redis.get(key))
            except Exception as exc:
                self._redis_down_until = time.monotonic() + 30
                self.reason = f"redis unreachable ({type(exc).__name__}); counting in this replica for 30 s"
                logger.warning("rate limits: %s", self.reason)
        return await (self.local.incr(key, amount) if op == "incr" else self.local.get(key))

    @staticmethod
    def _key(principal: Principal, kind: str) -> str:
        return f"content-studio:limits:{principal.counter}:{int(time.time() // WINDOW_S)}:{kind}"

    @staticmethod
    def _retry_after() -> int:
        return max(1, math.ceil(WINDOW_S - time.time() % WINDOW_S))

    def _refuse(self, principal: Principal, what: str, limit: float) -> RateLimited:
        return RateLimited(
            f"rate limit reached for key {principal.name!r}: {limit:g} {what} per minute",
            retry_after_s=self._retry_after(),
        )

    async def admit(self, principal: Principal) -> None:
        """Count a request; refuse it when the key is over its requests, or has used up a quota, this minute."""
        limits = self.config.of(principal.role)
        if limits.requests_per_minute is not None:
            count = await self._counter("incr", self._key(principal, "requests"), 1)
            if count > limits.requests_per_minute:
                raise self._refuse(principal, "requests", limits.requests_per_minute)
        for kind, field in KINDS.items():
            limit = getattr(limits, field)
            if limit is not None and await self._counter("get", self._key(principal, kind)) >= limit:
                raise self._refuse(principal, field.removesuffix("_per_minute").replace("_", " "), limit)

    async def charge(self, principal: Principal, **used: float) -> None:
        """Add what a request generated (``tokens``, ``images``, ``audio_s``) to the key's minute."""
        limits = self.config.of(principal.role)
        for kind, amount in used.items():
            if amount and getattr(limits, KINDS[kind]) is not None:
                await self._counter("incr", self._key(principal, kind), float(amount))
