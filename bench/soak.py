"""Resilience benchmarks on the local profile: a burst at the edge, then a bounded soak.

- **Burst**: 300 completions at once, sent and timed by ``h2load`` (bench/burst.py), side by side on the same
  app: through Serve's Python proxy (the ingress refuses what the text deployments cannot hold) and through the C
  edge (HAProxy caps text at its capacity and refuses the rest itself). Measured: served, refused, and each
  group's latency (target: refusals' p95 < 100 ms; served p95 no worse through the edge).
- **Soak**: mixed load (completions, content, recommendations and interactions) for ``--minutes``; the memory of
  every Ray process of the app after warm-up and at the end (target: < 5% growth) and every failed request
  (target: none).

    python -m bench.soak --minutes 4 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.burst import h2load_burst
from bench.harness import ROOT, MemorySampler, app_processes, bench_config, deploy, local_ray, totals

BURST = 300
TARGETS = {"burst_refusal_p95_ms": 100.0, "burst_served_p95_ratio": 1.0, "soak_growth_pct": 5.0, "soak_failures": 0}


def bursts(proxy_url: str, edge_url: str, rounds: int = 2) -> dict[str, Any]:
    """The same burst through each edge, alternating, ``rounds`` times; the last round of each is reported (the
    first warms both up), every round is kept."""
    body = {"prompt": "Burst", "max_tokens": 16}
    runs: dict[str, list[dict[str, Any]]] = {"python_proxy": [], "c_edge": []}
    for _ in range(rounds):
        for name, url in (("python_proxy", proxy_url), ("c_edge", edge_url)):
            runs[name].append(h2load_burst(url, "/v1/completions", body, BURST))
            time.sleep(5)  # the served requests finish and the queues drain before the next burst
    return {name: {**results[-1], "rounds": results} for name, results in runs.items()}


async def mixed_load(url: str, seconds: float, failures: list[Any], counts: Counter) -> None:
    deadline = time.monotonic() + seconds

    async def call(http: httpx.AsyncClient, kind: str, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            failures.append((kind, repr(exc)))
            return None
        if response.status_code >= 400:
            failures.append((kind, response.status_code, response.text[:200]))
            return None
        counts[kind] += 1
        return response.json()

    async def completions(http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            body = {"prompt": f"Tide {random.random():.3f}", "max_tokens": 24}
            await call(http, "completion", "POST", "/v1/completions", json=body)

    async def contents(http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = {"topic": f"harbour {n}", "user_id": f"soak-{n % 20}", "image": {"steps": 2}}
            await call(http, "content", "POST", "/v1/content", json=body)

    async def readers(http: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            user = f"soak-{n % 20}"
            recs = await call(http, "recommendations", "GET", "/v1/recommendations", params={"user_id": user})
            if recs and recs["items"]:
                event = {"user_id": user, "item_id": recs["items"][0]["item_id"], "event": "view"}
                await call(http, "interaction", "POST", "/v1/interactions", json=event)
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await asyncio.gather(completions(http), completions(http), contents(http), readers(http))


def run(minutes: float, warmup_s: float) -> dict[str, Any]:

    from app.deploy import edge_url, free_port, session_config, wait_healthy
    from offline.tiny_models import ensure_tiny_models

    ensure_tiny_models()
    out: dict[str, Any] = {"minutes": minutes, "warmup_s": warmup_s}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")
        config = session_config(bench_config("local", ROOT), folder, free_port())
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        with local_ray() as dashboard:
            deploy(config, dashboard, folder, "app")
            wait_healthy(url)
            edge = edge_url(config)
            wait_healthy(edge)
            out["burst"] = bursts(url, edge)
            time.sleep(5)
            failures: list[Any] = []
            counts: Counter = Counter()
            asyncio.run(mixed_load(url, warmup_s, failures, counts))  # warm-up: caches, pools, first items
            processes = app_processes()
            sampler = MemorySampler(processes)
            start = sampler.sample()
            asyncio.run(mixed_load(url, minutes * 60, failures, counts))
            end = MemorySampler(processes).sample()
            start_total, end_total = totals(start)["rss_gb"], totals(end)["rss_gb"]
            out["soak"] = {
                "requests": dict(counts),
                "failures": len(failures),
                "failure_examples": [str(f)[:300] for f in failures[:10]],
                "rss_gb_after_warmup": start_total,
                "rss_gb_end": end_total,
                "growth_pct": 100 * (end_total - start_total) / start_total if start_total else None,
                "per_process_mb": {
                    label: {
                        "after_warmup": start[label]["rss"] / 2**20,
                        "end": end.get(label, {}).get("rss", 0) / 2**20,
                    }
                    for label in start
                },
            }
    edge, proxy = out["burst"]["c_edge"], out["burst"]["python_proxy"]
    out["targets"] = {
        "burst_refusal_p95_ms": {
            "value": edge["refused_p95_ms"],
            "target": TARGETS["burst_refusal_p95_ms"],
            "met": edge["refused"] == 0 or edge["refused_p95_ms"] < TARGETS["burst_refusal_p95_ms"],
        },
        "burst_served_p95_ratio": {
            "value": edge["served_p95_ms"] / proxy["served_p95_ms"],
            "target": TARGETS["burst_served_p95_ratio"],
            "met": edge["served_p95_ms"] <= proxy["served_p95_ms"] * TARGETS["burst_served_p95_ratio"],
        },
        "soak_growth_pct": {
            "value": out["soak"]["growth_pct"],
            "target": TARGETS["soak_growth_pct"],
            "met": (out["soak"]["growth_pct"] or 0) < TARGETS["soak_growth_pct"],
        },
        "soak_failures": {"value": out["soak"]["failures"], "target": 0, "met": out["soak"]["failures"] == 0},
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["soak"]
    lines = [
        f"## Burst and soak (local profile, {result['minutes']} min after {result['warmup_s']:.0f} s warm-up)",
        "",
    ]
    for name, label in (("python_proxy", "Serve's Python proxy"), ("c_edge", "the C edge (HAProxy)")):
        b = result["burst"][name]
        lines.append(
            f"- Burst of {b['requests']} completions (h2load) through {label}: {b['served']} served "
            f"(p50 {b['served_p50_ms']:.0f} ms, p95 {b['served_p95_ms']:.0f} ms), {b['refused']} refused "
            f"(p50 {b['refused_p50_ms']:.0f} ms, p95 {b['refused_p95_ms']:.0f} ms), other {b['other']}"
        )
    lines += [
        f"- Soak: {sum(s['requests'].values())} requests ({s['requests']}), {s['failures']} failed; Ray processes "
        f"{s['rss_gb_after_warmup']:.2f} → {s['rss_gb_end']:.2f} GB RSS ({s['growth_pct']:+.1f}%)",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for name, t in result["targets"].items():
        value = t["value"] if t["value"] is not None else float("nan")
        bound = {"soak_failures": "=", "burst_served_p95_ratio": "≤"}.get(name, "<")
        lines.append(f"| {name} {bound} {t['target']} | {value:.2f} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="Soak length after warm-up.")
    parser.add_argument("--warmup", type=float, default=60.0, help="Warm-up seconds before the first sample.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result = run(args.minutes, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    (args.out / "soak.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
