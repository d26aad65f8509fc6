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


def test_the_coalescer_merges_batches_that_wait_and_routes_each_rows_results() -> None:
    from deployments.replica import Coalescer

    runs: list[list[str]] = []
    gate = threading.Event()

    def run(rows: list[str], on_piece, on_done) -> list[str]:
        if not runs:
            gate.wait(5)  # the first call is slow: the others queue behind it
        runs.append(rows)
        for n, row in enumerate(rows):
            if on_piece is not None:
                on_piece(n, f"{row}-piece")
        return [row.upper() for row in rows]

    seen: list[tuple[int, str]] = []
    sizes: list[int] = []
    coalescer = Coalescer(run, max_rows=lambda: 3, observe=sizes.append)

    async def scenario() -> list[list[str]]:
        first = asyncio.ensure_future(coalescer.submit(["a"]))
        await asyncio.sleep(0.05)
        waiting = [
            asyncio.ensure_future(coalescer.submit(["b", "c"], lambda r, p: seen.append((r, p)))),
            asyncio.ensure_future(coalescer.submit(["d"])),
            asyncio.ensure_future(coalescer.submit(["e"])),  # over max_rows: the run after
        ]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first, *[await w for w in waiting]]

    assert asyncio.run(scenario()) == [["A"], ["B", "C"], ["D"], ["E"]]
    assert runs == [["a"], ["b", "c", "d"], ["e"]] and sizes == [1, 3, 1]
    assert seen == [(0, "b-piece"), (1, "c-piece")]  # row indices of its own batch


def test_the_coalescer_fails_every_batch_of_a_failed_run() -> None:
    from deployments.replica import Coalescer

    def run(rows, *_):
        raise RuntimeError("model broke")

    coalescer = Coalescer(run, max_rows=lambda: 8)

    async def scenario() -> list[BaseException | list]:
        return await asyncio.gather(coalescer.submit([1]), coalescer.submit([2]), return_exceptions=True)

    assert [str(r) for r in asyncio.run(scenario())] == ["model broke", "model broke"]
