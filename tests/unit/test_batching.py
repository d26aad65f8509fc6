"""Dynamic batching for the image service: batches that wait behind a running model call merge into the next."""

from __future__ import annotations

import asyncio
import threading


def test_the_coalescer_merges_batches_that_wait_and_routes_each_rows_results() -> None:
    from deployments.batching import Coalescer

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
    from deployments.batching import Coalescer

    def run(rows, *_):
        raise RuntimeError("model broke")

    coalescer = Coalescer(run, max_rows=lambda: 8)

    async def scenario() -> list[BaseException | list]:
        return await asyncio.gather(coalescer.submit([1]), coalescer.submit([2]), return_exceptions=True)

    assert [str(r) for r in asyncio.run(scenario())] == ["model broke", "model broke"]
