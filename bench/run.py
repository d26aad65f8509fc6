"""Benchmark harness: the microservice app against an all-in-one baseline, measured side by side; then the LLM
serving benchmark (bench/llm.py: continuous batching against the static baseline).

One command starts what it needs (a local Ray instance with the app deployed by ``serve deploy``, and the
baseline's uvicorn process), runs every measurement, stops everything, and writes ``bench/results/<profile>.json``,
``bench/results/summary.md`` and PNG plots. Profiles:

- ``local``: the tiny models of ``configs/local.yaml`` (the laptop profile);
- ``heavy``: bigger random-weight models (a 6-layer GPT-2, 128-pixel images) so that compute is realistic.

Both compare the same models; the experiment variant is left out so every request hits the same text model.
The machine is shared and noisy: ratios matter more than absolute times. No test asserts a timing; targets
are printed as pass/miss.

    make bench                                  (both profiles, then bench.llm on the heavy profile)
    python -m bench.run --profile local --quick (the smoke run the tests use)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.harness import (
    RESULTS,
    ROOT,
    MemorySampler,
    app_processes,
    bench_config,
    deploy,
    local_ray,
    machine,
    pct,
    totals,
)


@dataclass
class Settings:
    """How much of each measurement to run (``quick`` keeps the smoke run to a minute or two)."""

    pipeline_c1: int = 8
    pipeline_c8: int = 24

    @classmethod
    def quick(cls) -> Settings:
        return cls(pipeline_c1=2, pipeline_c8=8)


# --- load -------------------------------------------------------------------------------------------------
Measured = tuple[list[float], float, list[Any]]  # latencies, wall time, answers


async def _load(url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> Measured:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    answers: list[Any] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                started = time.perf_counter()
                response = await client.post(path, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                answers.append(response.json())

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return latencies, time.perf_counter() - started, answers


def load(url: str, path: str, bodies: list[dict[str, Any]], concurrency: int) -> Measured:
    return asyncio.run(_load(url, path, bodies, concurrency))


def measure_pipeline(url: str, s: Settings) -> dict[str, float]:
    # Seeded: the app and the baseline write the same articles, and a run repeats (the heavy profile's untrained
    # model writes an empty article for some seeds, which both refuse).
    body = lambda n: {"topic": f"a harbour town, part {n}", "user_id": f"user-{n % 60}", "seed": n}  # noqa: E731
    load(url, "/v1/content", [body(0)], 1)  # warm-up
    lat, _, _ = load(url, "/v1/content", [body(n) for n in range(s.pipeline_c1)], 1)
    _, wall, _ = load(url, "/v1/content", [body(n) for n in range(s.pipeline_c8)], 8)
    return {"p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "throughput_c8_rps": s.pipeline_c8 / wall}


# --- the run ----------------------------------------------------------------------------------------------
def start_baseline(config: dict[str, Any], root: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    from app.deploy import free_port

    path = folder / "baseline.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "CONTENT_STUDIO_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench.baselines.allinone", "--config", str(path), "--port", str(port)]
    cmd += ["--data", str(folder / "baseline-data")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the baseline exited during start-up")
        time.sleep(1)
    proc.terminate()
    raise TimeoutError("the baseline did not answer /v1/health within 300 s")


def run_profile(profile: str, settings: Settings) -> dict[str, Any]:
    import psutil

    from app.deploy import free_port, session_config, wait_healthy
    from offline.tiny_models import ensure_tiny_models

    ensure_tiny_models()
    out: dict[str, Any] = {"profile": profile, "settings": settings.__dict__, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")  # the models; data goes to the temp folder
        config = session_config(bench_config(profile, ROOT), folder, free_port())
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        baseline = None
        with local_ray() as dashboard:
            try:
                started = time.perf_counter()
                deploy(config, dashboard, folder, "app")
                wait_healthy(url)
                out["cold_start_s"] = {"app": time.perf_counter() - started}
                started = time.perf_counter()
                baseline, base_url = start_baseline(config, folder, folder)
                out["cold_start_s"]["baseline"] = time.perf_counter() - started

                processes = app_processes()
                baseline_proc = {"baseline": psutil.Process(baseline.pid)}
                rest = MemorySampler(processes).sample()
                out["memory_at_rest"] = {"app": rest, "app_total": totals(rest)}
                base_rest = MemorySampler(baseline_proc).sample()
                out["memory_at_rest"]["baseline_total"] = totals(base_rest)

                with MemorySampler(processes) as app_mem:
                    out["pipeline"] = {"app": measure_pipeline(url, settings)}
                with MemorySampler(baseline_proc) as base_mem:
                    out["pipeline"]["baseline"] = measure_pipeline(base_url, settings)
                out["memory_under_load"] = {
                    "app": app_mem.peak,
                    "app_total": totals(app_mem.peak),
                    "baseline_total": totals(base_mem.peak),
                }
                baseline.terminate()
                baseline.wait(30)
                baseline = None
            finally:
                if baseline is not None:
                    baseline.terminate()
    out["ratios"] = ratios(out)
    out["targets"] = targets(out)
    return out


def ratios(r: dict[str, Any]) -> dict[str, float]:
    p = r["pipeline"]
    return {
        "throughput_vs_baseline": p["app"]["throughput_c8_rps"] / p["baseline"]["throughput_c8_rps"],
        "p50_vs_baseline": p["app"]["p50_s"] / p["baseline"]["p50_s"],
        "app_pss_gb_under_load": r["memory_under_load"]["app_total"]["pss_gb"],
        "app_rss_gb_under_load": r["memory_under_load"]["app_total"]["rss_gb"],
    }


TARGETS = {  # name: (ratio, comparison, bound, profile it applies to)
    "pipeline throughput >= 1.5x baseline at c=8": ("throughput_vs_baseline", ">=", 1.5, "heavy"),
    "pipeline p50 <= 1.1x baseline at c=1": ("p50_vs_baseline", "<=", 1.1, "heavy"),
    "whole app < 6 GB resident (PSS, under load)": ("app_pss_gb_under_load", "<", 6.0, "local"),
}


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (key, op, bound, profile) in TARGETS.items():
        if profile != r["profile"]:
            continue
        value = r["ratios"][key]
        ok = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[name] = {"value": round(value, 3), "bound": bound, "pass": ok}
    return out


# --- reporting --------------------------------------------------------------------------------------------
def get(result: dict[str, Any], path: str) -> Any:
    """``get(r, "pipeline.app.p50_s")``."""
    for key in path.split("."):
        result = result[key]
    return result


ROWS: list[tuple[str, list[str], str]] = [  # label, values (dotted paths), format of each
    ("pipeline p50 at c=1, app / baseline (s)", ["pipeline.app.p50_s", "pipeline.baseline.p50_s"], "{:.2f}"),
    ("pipeline p95 at c=1, app / baseline (s)", ["pipeline.app.p95_s", "pipeline.baseline.p95_s"], "{:.2f}"),
    (
        "pipeline throughput at c=8, app / baseline (req/s)",
        ["pipeline.app.throughput_c8_rps", "pipeline.baseline.throughput_c8_rps"],
        "{:.2f}",
    ),
    ("throughput ratio, app / baseline", ["ratios.throughput_vs_baseline"], "{:.2f}x"),
    ("p50 ratio, app / baseline", ["ratios.p50_vs_baseline"], "{:.2f}x"),
    ("cold start to all ready: app / baseline (s)", ["cold_start_s.app", "cold_start_s.baseline"], "{:.0f}"),
    (
        "memory at rest, app PSS / RSS (GB)",
        ["memory_at_rest.app_total.pss_gb", "memory_at_rest.app_total.rss_gb"],
        "{:.2f}",
    ),
    (
        "memory under load, app PSS / RSS (GB)",
        ["memory_under_load.app_total.pss_gb", "memory_under_load.app_total.rss_gb"],
        "{:.2f}",
    ),
    (
        "memory under load, baseline PSS / RSS (GB)",
        ["memory_under_load.baseline_total.pss_gb", "memory_under_load.baseline_total.rss_gb"],
        "{:.2f}",
    ),
]


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| measurement | " + " | ".join(r["profile"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for label, paths, fmt in ROWS:
        cells = []
        for r in results:
            try:
                cells.append(" / ".join(fmt.format(get(r, path)) for path in paths))
            except KeyError:
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        for name, t in r["targets"].items():
            lines.append(f"- {r['profile']}: {'pass' if t['pass'] else 'MISS'}: {name} (measured {t['value']})")
    return "\n".join(lines) + "\n"


PANELS = [  # title, unit, (label, path) of the two bars
    ("pipeline p50 at c=1", "s", ("app", "pipeline.app.p50_s"), ("all-in-one", "pipeline.baseline.p50_s")),
    (
        "pipeline throughput at c=8",
        "req/s",
        ("app", "pipeline.app.throughput_c8_rps"),
        ("all-in-one", "pipeline.baseline.throughput_c8_rps"),
    ),
]


def plots(results: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 3.8))
    xs = list(range(len(results)))
    width = 0.38
    for ax, (title, unit, *bars) in zip(axes, PANELS, strict=True):
        for offset, (label, path) in zip((-width / 2, width / 2), bars, strict=True):
            ax.bar([x + offset for x in xs], [get(r, path) for r in results], width, label=label)
        ax.set_xticks(xs, [r["profile"] for r in results])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)
    for r in results:
        memory = r["memory_under_load"]["app"]
        labels = sorted(memory, key=lambda k: -memory[k]["pss"])
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1))
        ax.barh(labels, [memory[k]["pss"] / 2**20 for k in labels])
        ax.set_xlabel("peak PSS under load (MiB)")
        ax.set_title(f"{r['profile']}: memory per Ray process of the app")
        fig.tight_layout()
        path = out / f"memory-{r['profile']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["local", "heavy", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM serving benchmark (bench/llm.py)")
    args = parser.parse_args()
    settings = Settings.quick() if args.quick else Settings()
    profiles = ["local", "heavy"] if args.profile == "all" else [args.profile]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for profile in profiles:
        print(f"== {profile} ==", file=sys.stderr, flush=True)
        result = run_profile(profile, settings)
        (args.out / f"{profile}.json").write_text(json.dumps(result, indent=2))
        results.append(result)
    table = markdown(results)
    plots(results, args.out)
    if not args.no_llm:
        from bench import llm, llm_report

        print("== llm ==", file=sys.stderr, flush=True)
        quick = args.quick
        llm_profile = "local" if quick else "heavy"
        result = llm.run(llm_profile, llm.LLMSettings.quick() if quick else llm.LLMSettings())
        (args.out / f"llm-{llm_profile}.json").write_text(json.dumps(result, indent=2))
        llm_report.plot(result, args.out)
        table += "\n" + llm_report.markdown(result)
    (args.out / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
