"""The replica glue: blocking work streamed out of a thread, and cancelled when the consumer leaves."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deployments.replica import iterate_in_thread


def test_items_then_the_result() -> None:
    def work(emit, cancel):
        for i in range(3):
            emit(i)
        return "done"

    async def collect():
        return [item async for item in iterate_in_thread(work)]

    assert asyncio.run(collect()) == [0, 1, 2, "done"]


def test_errors_of_the_work_reach_the_consumer() -> None:
    def work(emit, cancel):
        emit("first")
        raise ValueError("broken")

    async def collect():
        return [item async for item in iterate_in_thread(work)]

    with pytest.raises(ValueError, match="broken"):
        asyncio.run(collect())


def test_leaving_early_sets_cancel() -> None:
    stopped = threading.Event()

    def work(emit, cancel):
        for i in range(500):
            if cancel.is_set():
                stopped.set()
                return "cancelled"
            emit(i)
            time.sleep(0.01)
        return "finished"

    async def consume() -> None:
        stream = iterate_in_thread(work)
        async for item in stream:
            if item == 3:
                break
        await stream.aclose()
        await asyncio.to_thread(stopped.wait, 5)

    asyncio.run(consume())
    assert stopped.is_set()
