"""The streamed composition against the sequential one, side by side on one app: time to first audio, the whole
content, and throughput (``bench/results/streaming.{json,md}``).

The heavy profile's text model (a 6-layer GPT-2) with a voice that speaks at a real model's pace (a VITS of
Coqui's own sizes, random weights: a sentence takes a second or two on this CPU); the tiny voice would say a
whole article in milliseconds and hide the sum of stages this measures. The two compositions alternate round by
round on the same replicas (the pipeline's ``composition`` is changed in place by ``serve deploy``), so the
machine's noise falls on both alike. Seeded requests: both compositions write the same articles.

Time to first audio: the first ``audio_chunk`` event of a streamed content; in the sequential composition the
audio exists only whole, so its first sound can play when the ``audio`` stage event says the file is ready.

    python -m bench.streaming [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import RESULTS, ROOT, bench_config, deploy, ensure_heavy_voice, local_ray, machine, pct

COMPOSITIONS = ("streamed", "sequential")
TARGETS = {  # measurement: (comparison, bound), streamed over sequential
    "first_audio_c1": ("<=", 0.25),
    "complete_c1": ("<=", 0.8),
    "throughput_c8": (">=", 0.95),
}


def streaming_config(root: Path, port: int) -> dict[str, Any]:
    from app.deploy import session_config

    config = session_config(bench_config("heavy", ROOT), root, port)
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    deployments["voice"]["user_config"]["model"] = str(ensure_heavy_voice(ROOT).relative_to(ROOT))
    # Text and voice each on a core of its own (Ray sizes torch's threads to num_cpus), as each model has its own
    # device in a cluster: with both on every core they slow each other down, which is this machine, not the
    # composition. Stage timeouts long enough that a saturated voice service queues rather than times out.
    for name in ("text", "voice"):
        deployments[name]["ray_actor_options"]["num_cpus"] = 1
    # Two voice replicas for both compositions: the streamed one can speak two parts of one content at once
    # (`narration.in_flight`), the sequential one reads a whole article in one call; at c=8 both use both.
    deployments["voice"]["num_replicas"] = 2
    deployments["pipeline"]["user_config"]["timeouts_s"] = {"article": 600, "image": 600, "audio": 600}
    return config


def with_composition(config: dict[str, Any], composition: str) -> dict[str, Any]:
    config = copy.deepcopy(config)
    pipeline = next(d for d in config["applications"][0]["deployments"] if d["name"] == "pipeline")
    pipeline["user_config"]["composition"] = composition
    return config


async def one_content(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, float]:
    """One streamed content request: when its first token, first audio, article and record came (seconds)."""
    marks: dict[str, float] = {}
    started = time.perf_counter()
    event = ""
    async with client.stream("POST", "/v1/content", json={**body, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
                at = time.perf_counter() - started
                marks["audio_chunks"] = marks.get("audio_chunks", 0) + (event == "audio_chunk")
                first = {"token": "first_token", "audio_chunk": "first_audio", "audio": "audio_ready"}.get(event)
                if first and first not in marks:
                    marks[first] = at
                if event in ("article", "complete", "failed"):
                    marks[event] = at
            elif line.startswith("data: ") and event in ("complete", "failed"):
                record = json.loads(line[len("data: ") :])
                marks["ok"] = float(record.get("status") == "complete")
    marks.setdefault("first_audio", marks.get("audio_ready", float("nan")))
    return marks


async def _load(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[list[dict[str, float]], float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:

        async def one(body: dict[str, Any]) -> dict[str, float]:
            async with gate:
                return await one_content(client, body)

        started = time.perf_counter()
        marks = await asyncio.gather(*(one(b) for b in bodies))
        return list(marks), time.perf_counter() - started


def load(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[list[dict[str, float]], float]:
    return asyncio.run(_load(url, bodies, concurrency))


def body(n: int) -> dict[str, Any]:
    return {"topic": f"a harbour town, part {n}", "user_id": f"user-{n % 60}", "seed": n}


def wait_composition(url: str, composition: str, timeout: float = 120) -> None:
    """Until the pipeline answers in ``composition`` (``serve deploy`` reconfigures it in place)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = load(url, [body(10_000)], 1)[0][0]
        if (marks.get("audio_chunks", 0) > 0) == (composition == "streamed"):
            return
        time.sleep(1)
    raise TimeoutError(f"the pipeline did not switch to {composition} within {timeout}s")


def summarize(c1: list[dict[str, float]], c8: list[dict[str, float]], walls_c8: list[float]) -> dict[str, Any]:
    def p50(key: str) -> float:
        return pct([m[key] for m in c1 if key in m], 0.5)

    return {
        "first_token_c1_s": p50("first_token"),
        "first_audio_c1_s": p50("first_audio"),
        "article_c1_s": p50("article"),
        "complete_c1_s": p50("complete"),
        "complete_c1_p95_s": pct([m["complete"] for m in c1 if "complete" in m], 0.95),
        "throughput_c8_rps": len(c8) / sum(walls_c8),
        "complete_share": statistics.fmean(m.get("ok", 0.0) for m in c1 + c8),
    }


def run(rounds: int, c1: int, c8: int) -> dict[str, Any]:
    from app.deploy import free_port, wait_healthy
    from offline.tiny_models import ensure_tiny_models

    ensure_tiny_models()
    out: dict[str, Any] = {"machine": machine(), "settings": {"rounds": rounds, "c1": c1, "c8": c8}}
    samples: dict[str, dict[str, list]] = {name: {"c1": [], "c8": [], "wall_c8": []} for name in COMPOSITIONS}
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp, local_ray() as dashboard:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")
        config = streaming_config(folder, free_port())
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        for round_ in range(rounds):
            for composition in COMPOSITIONS:
                print(f"round {round_ + 1}: {composition}", file=sys.stderr, flush=True)
                deploy(with_composition(config, composition), dashboard, folder, composition)
                wait_healthy(url)
                wait_composition(url, composition)
                marks, _ = load(url, [body(n) for n in range(c1)], 1)
                samples[composition]["c1"] += marks
                marks, wall = load(url, [body(100 + n) for n in range(c8)], 8)
                samples[composition]["c8"] += marks
                samples[composition]["wall_c8"].append(wall)
    for composition, s in samples.items():
        out[composition] = summarize(s["c1"], s["c8"], s["wall_c8"])
    streamed, sequential = out["streamed"], out["sequential"]
    out["ratios"] = {
        "first_audio_c1": streamed["first_audio_c1_s"] / sequential["first_audio_c1_s"],
        "complete_c1": streamed["complete_c1_s"] / sequential["complete_c1_s"],
        "throughput_c8": streamed["throughput_c8_rps"] / sequential["throughput_c8_rps"],
    }
    out["targets"] = {
        name: {
            "bound": f"{op} {bound}",
            "value": round(out["ratios"][name], 3),
            "pass": out["ratios"][name] <= bound if op == "<=" else out["ratios"][name] >= bound,
        }
        for name, (op, bound) in TARGETS.items()
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = [
        ("first token, c=1, p50 (s)", "first_token_c1_s"),
        ("first audio, c=1, p50 (s)", "first_audio_c1_s"),
        ("article complete, c=1, p50 (s)", "article_c1_s"),
        ("whole content, c=1, p50 (s)", "complete_c1_s"),
        ("whole content, c=1, p95 (s)", "complete_c1_p95_s"),
        ("throughput, c=8 (contents/s)", "throughput_c8_rps"),
        ("complete (not partial) share", "complete_share"),
    ]
    lines = ["| measurement | streamed | sequential |", "|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {result['streamed'][key]:.3f} | {result['sequential'][key]:.3f} |")
    lines.append("")
    for name, t in result["targets"].items():
        lines.append(f"- {'pass' if t['pass'] else 'MISS'}: {name}, streamed / sequential {t['bound']}: {t['value']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of a few requests (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rounds, c1, c8 = (1, 2, 8) if args.quick else (2, 4, 16)
    result = run(rounds, c1, c8)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(result, indent=2))
    (args.out / "streaming.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
