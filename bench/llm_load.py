"""The LLM benchmark's load: completions sent as token ids to ``/v1/completions``, plain or streamed, all at once
or at Poisson arrivals, and what is measured of them (time to first token, inter-token gaps, throughput)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.harness import pct

MODEL = "bench-gpt2"  # the served model name the benchmark's configs give the text model


def body(prompt: list[int], output: int, stream: bool) -> dict[str, Any]:
    out = {"model": MODEL, "prompt": prompt, "max_tokens": output, "ignore_eos": True, "temperature": 0}
    if stream:
        out.update(stream=True, stream_options={"include_usage": True})
    return out


@dataclass
class Sample:
    start: float
    ttft: float
    end: float
    tokens: int
    gaps: list[float]
    tpot: float | None = None  # time per output token after the first: the pace a client sees, however chunked


@dataclass
class Arrivals:
    """When a stream's text came, message by message: one clock for the HTTP client here and for the engine-alone
    reference (bench/llm_paced.py), so that both are timed alike."""

    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)

    def text(self) -> None:
        """A message carrying text arrived now."""
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.first = now if self.first is None else self.first
        self.last = now

    def sample(self, start: float, end: float, tokens: int, t0: float = 0.0) -> Sample:
        """The stream's sample (times from ``t0``), once it ended with ``tokens`` output tokens."""
        first, last = self.first, self.last
        tpot = (last - first) / (tokens - 1) if first is not None and last is not None and tokens > 1 else None
        return Sample(start - t0, (first or end) - start, end - t0, tokens, self.gaps, tpot)


async def _one(client: httpx.AsyncClient, prompt: list[int], output: int, stream: bool, t0: float) -> Sample:
    start = time.perf_counter()
    if not stream:
        response = await client.post("/v1/completions", json=body(prompt, output, False))
        response.raise_for_status()
        end = time.perf_counter()
        return Sample(start - t0, end - start, end - t0, response.json()["usage"]["completion_tokens"], [])
    arrivals, tokens = Arrivals(), 0
    async with client.stream("POST", "/v1/completions", json=body(prompt, output, True)) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.text()
    return arrivals.sample(start, time.perf_counter(), tokens, t0)


async def drive(url: str, items: list[tuple[list[int], int]], rate: float | None, stream: bool) -> list[Sample]:
    """Every request at once (``rate`` None), or open-loop Poisson arrivals at ``rate`` requests/s."""
    rng = random.Random(1)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        tasks, at = [], 0.0
        for prompt, output in items:
            if rate is not None:
                await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
                at += rng.expovariate(rate)
            tasks.append(asyncio.ensure_future(_one(client, prompt, output, stream, t0)))
        return list(await asyncio.gather(*tasks))


def summarize(samples: list[Sample]) -> dict[str, float]:
    span = max(s.end for s in samples) - min(s.start for s in samples)
    tokens = sum(s.tokens for s in samples)
    gaps = [g for s in samples for g in s.gaps]
    streamed = [s for s in samples if s.tpot is not None]
    return {
        "requests": len(samples),
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / span,
        "requests_per_s": len(samples) / span,
        "ttft_p50_s": pct([s.ttft for s in samples], 0.5),
        "ttft_p95_s": pct([s.ttft for s in samples], 0.95),
        "itl_p50_ms": pct(gaps, 0.5) * 1000,
        "itl_p95_ms": pct(gaps, 0.95) * 1000,
        "tpot_p50_ms": pct([s.tpot for s in streamed if s.tpot is not None], 0.5) * 1000,
        # over the streams that sent text (a chunk per gap, plus the first): 1 while each chunk holds one token
        "chunks_per_token": sum(len(s.gaps) + 1 for s in streamed) / max(1, sum(s.tokens for s in streamed)),
        "e2e_p50_s": pct([s.end - s.start for s in samples], 0.5),
    }


def measure(url: str, items: list[tuple[list[int], int]], rate: float | None, stream: bool) -> dict[str, float]:
    return summarize(asyncio.run(drive(url, items, rate, stream)))
