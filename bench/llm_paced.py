"""Paced streams: inter-token latency of few and many concurrent streams, each paced at a fixed time a token, over
HTTP and, for reference, against the engine alone in this process.

The issue's target (64 streams within 10% of 8) bounds the serving path's cost per token message. It can be read
only where the engine itself keeps pace with the most streams: on a host whose engine makes fewer tokens a second
than the streams ask for (64 at 50 ms a token ask for 1,280), the streams slow down in process too, and the ratio
over HTTP measures the engine, not the path. ``paced_in_process`` measures that reference on the same host, in the
same run; the report reads the target only where it holds.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import app_processes, busy_cpu_s, deploy
from bench.llm_load import Arrivals, Sample, measure, summarize

# A paced stream's time per token: a large model's step, whatever this machine's engine does. At 50 ms, the heavy
# engine's 64 streams ask for 1,280 tokens/s: all it made at 64 rows in process on the fastest 2-core host seen
# (1,277, 2026-12-07 afternoon), about 300 on the slowest (that evening). At 100 ms they ask for half.
PACES_S = (0.05, 0.1)  # seconds a token the text replica waits after each message of a stream


def prompts(count: int) -> list[list[int]]:
    """The paced streams' prompts (one each; short, so that what is measured is the decode)."""
    return [[11 + i % 50, 12, 13, 14] for i in range(count)]


def paced_streams(
    config: dict[str, Any], dashboard: str, folder: Path, url: str, counts: tuple[int, ...], tokens: int
) -> dict[str, Any]:
    """Inter-token latency of ``counts`` concurrent streams over HTTP (``url``), the text replica pacing every
    stream at each of ``PACES_S`` a token (its ``faults.stream_delay_s``): the engine's load per stream is the same
    at any count, and what grows with the count is the serving path's (a message per engine step at most, through
    the replica, the ingress, Serve's proxy where there is one, and the edge). ``serve deploy`` reconfigures the
    text replica in place, and back afterwards. By pace in ms: the streams' measurements, and the most's time per
    output token p50 over the fewest's."""
    by_pace = {}
    for pace in PACES_S:
        paced = copy.deepcopy(config)
        text = next(d for d in paced["applications"][0]["deployments"] if d["name"] == "text")
        text["user_config"].setdefault("faults", {})["stream_delay_s"] = pace
        deploy(paced, dashboard, folder, f"paced-{pace * 1000:.0f}")
        deadline = time.monotonic() + 120
        while abs(measure(url, [(prompts(1)[0], 4)], None, True)["itl_p50_ms"] / (pace * 1000) - 1) > 0.2:
            if time.monotonic() > deadline:
                raise TimeoutError("the text replica did not take its stream pacing within 120 s")
            time.sleep(1)
        replicas = [p for label, p in app_processes().items() if label.startswith("replica text ")]
        by_streams = {
            str(n): accounted(lambda n=n: measure(url, [(p, tokens) for p in prompts(n)], None, True), replicas)
            for n in counts
        }
        by_pace[f"{pace * 1000:.0f}"] = {"by_streams": by_streams, "tpot_ratio": _ratio(by_streams, counts)}
    deploy(config, dashboard, folder, "unpaced")
    return by_pace


def paced_in_process(service: Any, counts: tuple[int, ...], tokens: int) -> dict[str, Any]:
    """The same streams against the engine alone (``service``, a ``TextService`` in this process), paced as the
    replica paces them (its ``faults.stream_delay_s``: a token at a time) and timed as the HTTP client times them
    (a gap between messages that carry text): the host's own time per token at each count, which the HTTP figures
    are read against."""
    from deployments.text import ChoiceDelta, TextRequest, TextResult

    async def one(prompt: list[int]) -> Sample:
        request = TextRequest(prompt_token_ids=prompt, max_tokens=tokens, ignore_eos=True, temperature=0)
        start, arrivals, count = time.perf_counter(), Arrivals(), 0
        async for item in service.stream(service.prepare(request)):
            if isinstance(item, ChoiceDelta) and item.text:
                arrivals.text()
            if isinstance(item, TextResult):
                count = item.completion_tokens
        return arrivals.sample(start, time.perf_counter(), count)

    async def streams(n: int) -> list[Sample]:
        return list(await asyncio.gather(*(one(p) for p in prompts(n))))

    config = service.config
    by_pace = {}
    try:
        for pace in PACES_S:  # applied as the replica applies a new user_config in place
            faults = config.faults.model_copy(update={"stream_delay_s": pace})
            service.apply_config(config.model_copy(update={"faults": faults}))
            by_streams = {str(n): accounted(lambda n=n: summarize(asyncio.run(streams(n)))) for n in counts}
            by_pace[f"{pace * 1000:.0f}"] = {"by_streams": by_streams, "tpot_ratio": _ratio(by_streams, counts)}
    finally:
        service.apply_config(config)
    return by_pace


def accounted(run: Callable[[], dict[str, float]], replicas: list[Any] | None = None) -> dict[str, float]:
    """``run``'s measurement, with the CPU it cost per output token: the whole host's (``host_cpu_ms_per_token``)
    and, given the text ``replicas`` (psutil processes), theirs (``text_replica_cpu_ms_per_token``). On a CPU host
    the engine and the serving path share the same cores: what the rest of the host spends a token (the ingress,
    the edge, Ray and the client) is CPU the engine no longer has (docs/edge-measurements.md, 2026-12-08)."""
    replicas = replicas or []

    def replicas_s() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in replicas)

    host, own = busy_cpu_s(), replicas_s()
    measured = run()
    tokens = max(1, measured["output_tokens"])
    measured["host_cpu_ms_per_token"] = (busy_cpu_s() - host) * 1000 / tokens
    if replicas:
        measured["text_replica_cpu_ms_per_token"] = (replicas_s() - own) * 1000 / tokens
    return measured


def _ratio(by_streams: dict[str, dict[str, float]], counts: tuple[int, ...]) -> float:
    """The most streams' time per output token p50 over the fewest's: the inter-token latency a client sees, where
    a message may carry several tokens (the text service sends what is ready at once in one)."""
    return by_streams[str(max(counts))]["tpot_p50_ms"] / by_streams[str(min(counts))]["tpot_p50_ms"]
