"""LLM serving benchmark: the continuous-batching text engine against the static baseline, on a realistic workload.

Workload: prompts of 16-256 tokens and outputs of 16-256 tokens drawn from a seeded log-uniform distribution
(many short requests, some long ones), sent as token ids so that lengths are exact, greedy with ``ignore_eos`` so
that every output is as long as drawn. Both engines serve the same app over HTTP (`serve deploy`), one after
the other on the same Ray instance; each is measured:

- at saturation (every request at once): output tokens/s, and the KV cache used meanwhile;
- open-loop (Poisson arrivals) at several rates up to saturation: TTFT, inter-token latency, throughput; the
  throughput-latency curves are plotted;
- with guidellm (the vLLM project's client) against ``/v1/completions``: its own Poisson and concurrent profiles;

plus, for the new engine, its in-process ceiling on the same workload (``TextService`` in this process,
everything submitted at once), the time to first token of one 128-token completion, what a handle and HTTP add
to a one-token call over the engine in-process, and inter-token latency of few and many paced streams. The
requests and their timing are bench/llm_load.py, guidellm's runs bench/llm_guidellm.py, the paced streams
(over HTTP and against the engine alone) bench/llm_paced.py. Targets are printed pass or MISS, or not readable
where the engine alone misses them on this host; nothing here is a test.

    python -m bench.llm [--quick] [--profile heavy|local] [--by-reference] [--direct-ingress-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import APP, RESULTS, ROOT, bench_config, deploy, ensure_heavy_text, local_ray, machine, settle
from bench.llm_guidellm import guidellm
from bench.llm_load import MODEL, Sample, drive, measure, summarize
from bench.llm_paced import paced_in_process, paced_streams
from bench.llm_report import llm_ratios, llm_targets, markdown, plot


@dataclass
class LLMSettings:
    requests: int = 48  # requests per measured load
    min_len: int = 16
    max_len: int = 256
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the saturation request rate
    guidellm_seconds: int = 30
    hop_calls: int = 100
    efficiency_rounds: int = 5  # turns of in-process ceiling and saturation over HTTP
    streams: tuple[int, ...] = (8, 64)  # concurrent paced streams: the fewest and the most
    paced_tokens: int = 48

    @classmethod
    def quick(cls) -> LLMSettings:
        return cls(
            requests=8,
            max_len=48,
            rate_fractions=(0.5,),
            guidellm_seconds=5,
            hop_calls=5,
            paced_tokens=12,
            efficiency_rounds=1,
        )


# --- workload -----------------------------------------------------------------------------------------------
def workload(s: LLMSettings, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """Seeded (prompt token ids, output length) pairs; lengths log-uniform in [min_len, max_len]."""
    rng = random.Random(seed)

    def length() -> int:
        return round(math.exp(rng.uniform(math.log(s.min_len), math.log(s.max_len))))

    return [([rng.randrange(10, vocab) for _ in range(length())], length()) for _ in range(s.requests)]


class KVSampler:
    """The text engine's KV-cache use, from /v1/health, while a load runs."""

    def __init__(self, url: str) -> None:
        self.url, self.peak, self.peak_running = url, 0.0, 0
        self._stop = False

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while not self._stop:
                try:
                    text = (await client.get("/v1/health")).json()["services"]["text"]
                    self.peak = max(self.peak, text.get("kv_cache", {}).get("used_share") or 0.0)
                    self.peak_running = max(self.peak_running, text.get("running", 0))
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                await asyncio.sleep(0.25)


def saturate(url: str, items: list[tuple[list[int], int]], stream: bool) -> dict[str, float]:
    async def go() -> tuple[list[Sample], KVSampler]:
        sampler = KVSampler(url)
        watcher = asyncio.ensure_future(sampler.run())
        try:
            return await drive(url, items, None, stream), sampler
        finally:
            sampler._stop = True
            await watcher

    samples, sampler = asyncio.run(go())
    return {**summarize(samples), "kv_cache_peak_used": sampler.peak, "peak_running": sampler.peak_running}


def warm_up(url: str, items: list[tuple[list[int], int]]) -> None:
    """The whole workload once over HTTP, unmeasured, as ``ceiling`` does in process: the engine's first pass over
    a workload's shapes ran about 30% slower here (three runs, 2026-12-07: whichever path was measured first after
    a deploy lost), and a cold engine must not be compared with a warm one."""
    measure(url, items, None, False)


# --- in process -----------------------------------------------------------------------------------------------
def ceiling(service: Any, items: list[tuple[list[int], int]], warm: bool = False) -> dict[str, float]:
    """The engine alone in this process, everything submitted at once: the serving layer's ceiling (after an
    unmeasured pass, unless the engine is ``warm`` already)."""
    from deployments.text import TextRequest

    def request(prompt: list[int], output: int) -> Any:
        return TextRequest(prompt_token_ids=prompt, max_tokens=output, ignore_eos=True, temperature=0)

    async def once() -> tuple[int, float]:
        started = time.perf_counter()
        results = await asyncio.gather(*(service.generate(service.prepare(request(p, o))) for p, o in items))
        return sum(r.completion_tokens for r in results), time.perf_counter() - started

    async def run() -> tuple[int, float]:
        if not warm:
            await once()  # unmeasured: the engine's first pass over these shapes is slower (``warm_up``)
        return await once()

    tokens, wall = asyncio.run(run())
    return {"output_tokens_per_s": tokens / wall, "output_tokens": tokens, "wall_s": wall}


def efficiency(service: Any, url: str, items: list[tuple[list[int], int]], rounds: int) -> dict[str, Any]:
    """Serving efficiency: output tokens/s at saturation over HTTP against the engine in this process (``service``,
    warmed by ``run``'s first ceiling), measured in turns ``rounds`` times: the median of the rounds' ratios, each
    saturation over the ceiling measured just before it. This machine's own speed drifted by up to a quarter within
    a minute (in process: 565, then 437 tokens/s; on 2026-12-07 the ceilings of one run spread from 873 to 1,152),
    so a ceiling is compared only with the saturation beside it, never with one measured minutes apart."""
    ceilings, served = [], []
    for _ in range(rounds):
        ceilings.append(ceiling(service, items, warm=True)["output_tokens_per_s"])
        served.append(summarize(asyncio.run(drive(url, items, None, False)))["output_tokens_per_s"])
    ratios = [s / c for s, c in zip(served, ceilings, strict=True)]
    return {"ceilings": ceilings, "served": served, "ratios": ratios, "efficiency": statistics.median(ratios)}


def hop(service: Any, s: LLMSettings, url: str, by_value: bool) -> dict[str, float]:
    """One-token call: the engine in this process, through a DeploymentHandle, and over HTTP (``url``: the edge);
    with the bare round trips of both paths (a handle call that does nothing, and ``GET /ping``: HTTP to the
    ingress and back), so that what serving adds is what is left over. The handle calls travel as the ingress's
    do (``by_value``: over the replica's gRPC server)."""
    from ray import serve

    from deployments.text import TextRequest

    request = TextRequest(prompt="Hello", max_tokens=1, temperature=0)
    handle = serve.get_deployment_handle("text", app_name=APP).options(_by_reference=not by_value)
    one = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}

    with httpx.Client(base_url=url, timeout=60) as http:
        calls = {
            "direct_ms": lambda: asyncio.run(service.generate(service.prepare(request))),
            "handle_ms": lambda: handle.generate.remote(request).result(),
            "bare_handle_ms": lambda: handle.describe.remote().result(),
            "http_ms": lambda: http.post("/v1/completions", json=one).raise_for_status(),
            "bare_http_ms": lambda: http.get("/ping").raise_for_status(),
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        # The paths in turn, a block of calls each: this machine's speed drifts by a quarter within a minute
        # (measured), so a path timed all at once would be compared with the others at another speed. Each block
        # starts with a call unmeasured: right after the in-process engine's forward its threads still hold the
        # cores a moment (measured: call by call, a handle call after an in-process one took 9 ms more, not 4).
        block = min(HOP_BLOCK, s.hop_calls)
        for _ in range(max(1, s.hop_calls // block)):
            for name, call in calls.items():
                call()
                for _ in range(block):
                    started = time.perf_counter()
                    call()
                    samples[name].append((time.perf_counter() - started) * 1000)
    out = {name: statistics.median(values) for name, values in samples.items()}
    out["added_ms"] = out["handle_ms"] - out["direct_ms"]
    # The reading: over the engine in process plus one bare HTTP round trip to the ingress.
    out["http_added_ms"] = out["http_ms"] - out["direct_ms"] - out["bare_http_ms"]
    return out


HOP_BLOCK = 10  # calls of one path in a row, in ``hop``


def ttft_share(url: str, tokens: int = 128, runs: int = 3) -> dict[str, float]:
    firsts, wholes = [], []
    for n in range(runs + 1):
        samples = asyncio.run(drive(url, [([11 + n, 12, 13, 14], tokens)], None, True))
        if n:  # the first warms up
            firsts.append(samples[0].ttft)
            wholes.append(samples[0].end - samples[0].start)
    ttft, whole = statistics.median(firsts), statistics.median(wholes)
    return {"ttft_s": ttft, "whole_s": whole, "share": ttft / whole}


# Serve's direct ingress, per Ray instance: each ingress replica serves HTTP on its own port and the edge fronts
# those ports (no Python proxy on the path). A stopping ingress replica stays reachable this long for the edge to
# take it out (Serve's default is 30 s, which would hold every redeploy of the bench).
DIRECT_INGRESS = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3"}


def run_direct_ingress(
    config: dict[str, Any], dashboard: str, folder: Path, items: list, s: LLMSettings, service: Any
) -> dict[str, Any]:
    """The continuous engine again, on a Ray instance with direct ingress: the edge straight onto the ingress
    replicas. Saturation (serving efficiency), the one-token hop and the paced streams, as through the proxy."""
    from ray import serve

    from app.deploy import edge_url, wait_healthy

    url = edge_url(config)
    assert url, "the bench's config has no edge"
    deploy(config, dashboard, folder, "direct-ingress")
    wait_healthy(url)
    edges = serve.get_deployment_handle("edge", "edge").describe.remote().result(timeout_s=30)["edges"]
    warm_up(url, items)
    idle = settle()
    return {
        "idle_before": idle,
        "fronted": sorted(a for e in edges.values() for a in e["upstreams"]),
        "direct_ingress": all(e["direct_ingress"] for e in edges.values()),
        "efficiency": efficiency(service, url, items, s.efficiency_rounds),
        "hop": hop(service, s, url, calls_by_value(config)),
        "paced_streams": paced_streams(config, dashboard, folder, url, s.streams, s.paced_tokens),
    }


def calls_by_value(config: dict[str, Any]) -> bool:
    """Whether the config's ingress calls the text service by value (``llm_config`` sets it)."""
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ingress")
    return ingress["user_config"]["by_value_calls"]


# --- configs and the run --------------------------------------------------------------------------------------
def llm_config(profile: str, root: Path, engine: str, by_value: bool = True) -> dict[str, Any]:
    """The bench's app (no experiment, one replica each) with the text model under test and its engine; the
    ingress calls the text service by value (over the replica's gRPC server) or, not ``by_value``, by reference."""
    config = bench_config("local", root)
    app = config["applications"][0]
    ingress = next(d for d in app["deployments"] if d["name"] == "ingress")
    ingress.setdefault("user_config", {})["by_value_calls"] = by_value
    # A saturation is every request at once: on a slow host the static engine's last requests are answered after
    # the local profile's 60 s (a 504 ended one heavy run's warm-up, 2026-12-07). The bench measures throughput,
    # not the product's timeout.
    ingress["user_config"].setdefault("timeouts_s", {})["text"] = 600
    text = next(d for d in app["deployments"] if d["name"] == "text")
    user = text["user_config"]
    user["served_model_name"] = MODEL
    user["max_tokens_limit"] = 512
    if profile == "heavy":
        user["model"] = str(ensure_heavy_text(root).relative_to(root))
    if engine == "static":
        app["import_path"] = "bench.baselines.static_text:build_app"
        user["batching"] = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
        text.update(max_ongoing_requests=64, max_queued_requests=512)
    else:
        user["engine"] = {
            "kv_cache": {"page_size": 32, "num_blocks": 512, "max_batch_tokens": 64, "max_requests_per_batch": 64},
            "max_running": 64,
            "max_waiting": 448,
        }
        text.update(max_ongoing_requests=512, max_queued_requests=512)
    return config


def run_engine(
    name: str, config: dict[str, Any], dashboard: str, folder: Path, items: list, s: LLMSettings, tokenizer: Path
) -> dict[str, Any]:
    from app.deploy import wait_healthy

    url = f"http://127.0.0.1:{config['http_options']['port']}"
    deploy(config, dashboard, folder, name)
    wait_healthy(url)
    warm_up(url, items)
    out: dict[str, Any] = {"idle_before": settle(), "saturation": saturate(url, items, stream=False)}
    out["saturation_streamed"] = saturate(url, items, stream=True)
    sat_rate = out["saturation_streamed"]["requests_per_s"]
    out["rates"] = {}
    for fraction in s.rate_fractions:
        out["rates"][str(fraction)] = {"rate": fraction * sat_rate, **measure(url, items, fraction * sat_rate, True)}
    out["ttft_128"] = ttft_share(url)
    half = max(0.05, 0.5 * sat_rate)
    out["guidellm"] = {
        kind: guidellm(url, tokenizer, profile, (s.min_len, s.max_len), s.guidellm_seconds, folder)
        for kind, profile in (
            ("poisson", f"kind=poisson,rate={half:.3f}"),
            ("concurrent", "kind=concurrent,streams=16"),
        )
    }
    return out


def run(
    profile: str, s: LLMSettings, by_value: bool = True, direct_only: bool = False, out: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every section in turn, written into ``out`` as each ends, so that a caller keeps what was measured when a
    later section fails. ``direct_only``: the in-process ceiling and the direct-ingress section alone, the path
    the edge's targets are read on, in about a third of the whole run's time."""
    from ray import serve

    from app.deploy import edge_url, free_port, session_config
    from deployments.text import TextConfig, TextService
    from offline.tiny_models import ensure_tiny_models

    ensure_tiny_models()
    calls = "by value" if by_value else "by reference"
    out = {} if out is None else out
    out.update(profile=profile, settings=s.__dict__, calls=calls, machine=machine())
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")
        port = free_port()
        configs = {
            e: session_config(llm_config(profile, ROOT, e, by_value), folder, port) for e in ("continuous", "static")
        }
        text_user = next(d for d in configs["continuous"]["applications"][0]["deployments"] if d["name"] == "text")
        os.environ["CONTENT_STUDIO_ROOT"] = str(folder)
        service = TextService(TextConfig.model_validate(text_user["user_config"]))
        tokenizer = (
            Path(service.config.model) if Path(service.config.model).is_absolute() else folder / service.config.model
        )
        items = workload(s, service.vocab_size)
        out["workload"] = {
            "requests": len(items),
            "prompt_tokens": sum(len(p) for p, _ in items),
            "output_tokens": sum(o for _, o in items),
        }
        out["ceiling"] = ceiling(service, items)
        out["engine_paced"] = paced_in_process(service, s.streams, s.paced_tokens)  # what the host's engine keeps
        if not direct_only:
            with local_ray() as dashboard:
                continuous = configs["continuous"]
                out["continuous"] = run_engine("continuous", continuous, dashboard, folder, items, s, tokenizer)
                http = edge_url(continuous) or f"http://127.0.0.1:{continuous['http_options']['port']}"
                out["continuous"]["efficiency"] = efficiency(service, http, items, s.efficiency_rounds)
                out["continuous"]["hop"] = hop(service, s, http, calls_by_value(continuous))
                out["continuous"]["paced_streams"] = paced_streams(
                    continuous, dashboard, folder, http, s.streams, s.paced_tokens
                )
                serve.delete(APP)
                out["static"] = run_engine("static", configs["static"], dashboard, folder, items, s, tokenizer)
        with local_ray(env=DIRECT_INGRESS) as dashboard:
            out["direct_ingress"] = run_direct_ingress(configs["continuous"], dashboard, folder, items, s, service)
        service.engine.close(wait=True)  # a drain still running at exit aborts the interpreter (torch, Ray)
    out["ratios"] = llm_ratios(out)
    out["targets"] = llm_targets(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["heavy", "local"], default="heavy")
    parser.add_argument("--quick", action="store_true", help="a few requests: the smoke run")
    parser.add_argument(
        "--by-reference",
        action="store_true",
        help="the ingress calls the text service through the object store (Serve's default), not by value",
    )
    parser.add_argument(
        "--direct-ingress-only",
        action="store_true",
        help="the in-process ceiling and the edge onto the ingress replicas only (no proxy, no static engine)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = LLMSettings.quick() if args.quick else LLMSettings()
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"llm-{args.profile}" + ("-by-reference" if args.by_reference else "")
    name += "-direct-ingress" if args.direct_ingress_only else ""
    result: dict[str, Any] = {}
    try:
        run(args.profile, settings, not args.by_reference, args.direct_ingress_only, out=result)
    except BaseException:
        (args.out / f"{name}.partial.json").write_text(json.dumps(result, indent=2))  # what was measured
        raise
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / f"{name}.md").write_text(table)
    if "continuous" in result:  # the curves are the two engines' (not measured with --direct-ingress-only)
        plot(result, args.out)
    print(table)


if __name__ == "__main__":
    main()
