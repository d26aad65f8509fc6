"""In-process stand-ins for Ray Serve ``DeploymentHandle``s, for testing compositions without Ray.

They call the real deployment classes (the wrapped user classes, with their real engines) and mimic what the
pipeline relies on: ``handle.method.remote(*args)`` returns an awaitable response with ``cancel()``; responses
passed as arguments are resolved first (Serve's chaining); ``options(stream=True)`` returns an async iterator.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


class FakeResponse:
    def __init__(self, coro: Any) -> None:
        self._task = asyncio.ensure_future(coro)

    def __await__(self):
        return asyncio.shield(self._task).__await__()

    def cancel(self) -> None:
        self._task.cancel()


class FakeStream:
    def __init__(self, agen: Any) -> None:
        self._agen = agen
        self._closing: asyncio.Future | None = None

    def __aiter__(self):
        return self._agen.__aiter__()

    def cancel(self) -> None:
        self._closing = asyncio.ensure_future(self._agen.aclose())


async def _resolve(value: Any) -> Any:
    return await value if isinstance(value, FakeResponse) else value


class FakeMethod:
    def __init__(self, target: Any, name: str, stream: bool) -> None:
        self.fn, self.stream = getattr(target, name), stream

    def remote(self, *args: Any) -> Any:
        if self.stream:

            async def generate():
                resolved = [await _resolve(a) for a in args]
                async for item in self.fn(*resolved):
                    yield item

            return FakeStream(generate())

        async def call():
            resolved = [await _resolve(a) for a in args]
            result = self.fn(*resolved)
            return await result if inspect.isawaitable(result) else result

        return FakeResponse(call())


class FakeHandle:
    def __init__(self, target: Any, stream: bool = False) -> None:
        self._target, self._stream = target, stream

    def options(self, stream: bool = False, **_: Any) -> FakeHandle:
        return FakeHandle(self._target, stream)

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self._target, name, self._stream)
