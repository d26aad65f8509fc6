"""Admission to the continuous batch: which sequences run, which wait, which are refused.

A sequence is admitted while fewer than ``max_running`` run and the prompt + ``max_tokens`` of those admitted fit
the KV cache (times ``kv_overcommit``); others wait in a queue of ``max_waiting`` requests; one more is refused
with ``Unavailable`` (503 + Retry-After). So a full cache queues or refuses; it never crashes the engine's loop.
The sequences of one request (its ``n`` or ``best_of`` candidates, every prompt of a completion: one ``group``)
wait as one: a request takes one place in the queue however many sequences it holds, so a request that is valid
alone is never refused because it is large, and the queue counts what Serve and the edge count.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import NamedTuple

from deployments.errors import Unavailable


class _Waiter(NamedTuple):
    tokens: int
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    group: object


class Admission:
    """Counts running requests and their reserved KV tokens; callers wait in FIFO order, from any event loop."""

    def __init__(self, max_running: int, max_waiting: int, token_budget: int, retry_after_s: float) -> None:
        self.max_running, self.max_waiting, self.token_budget = max_running, max_waiting, token_budget
        self.retry_after_s = retry_after_s
        self.running = 0
        self.reserved = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._groups: collections.Counter[object] = collections.Counter()  # waiting sequences per request
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Requests waiting (each with one or more sequences)."""
        return len(self._groups)

    def _fits(self, tokens: int) -> bool:
        if self.running >= self.max_running:
            return False
        return self.running == 0 or self.reserved + tokens <= self.token_budget

    def _take(self, tokens: int) -> None:
        self.running += 1
        self.reserved += tokens

    async def acquire(self, tokens: int, group: object = None) -> None:
        """A place for one sequence of ``tokens`` (prompt + max_tokens); ``group``: the request it belongs to
        (None: a request of its own)."""
        group = object() if group is None else group
        with self._lock:
            if not self._waiters and self._fits(tokens):
                self._take(tokens)
                return
            if group not in self._groups and len(self._groups) >= self.max_waiting:
                raise Unavailable(
                    f"the text engine is full ({self.running} sequences running, {len(self._groups)} requests waiting)",
                    retry_after_s=self.retry_after_s,
                )
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append(_Waiter(tokens, future, loop, group))
            self._groups[group] += 1
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                left = [w for w in self._waiters if w.future is future]
                self._waiters = collections.deque(w for w in self._waiters if w.future is not future)
                for waiter in left:
                    self._leave(waiter.group)
            raise

    def _leave(self, group: object) -> None:
        self._groups[group] -= 1
        if self._groups[group] <= 0:
            del self._groups[group]

    def release(self, tokens: int) -> None:
        wake: list[_Waiter] = []
        with self._lock:
            self.running -= 1
            self.reserved -= tokens
            while self._waiters and self._fits(self._waiters[0].tokens):
                waiter = self._waiters.popleft()
                self._leave(waiter.group)
                self._take(waiter.tokens)
                wake.append(waiter)
        for waiter in wake:
            waiter.loop.call_soon_threadsafe(self._admit, waiter.future, waiter.tokens)

    def _admit(self, future: asyncio.Future[None], tokens: int) -> None:
        if future.cancelled():  # the caller gave up after its place was given: give the place back
            self.release(tokens)
        else:
            future.set_result(None)
