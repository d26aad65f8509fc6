"""Benchmark harness: the microservice app against an all-in-one baseline, measured side by side.

One command starts what it needs (a local Ray instance with the app deployed by ``serve deploy``, and the
baseline's uvicorn process), runs every measurement, stops everything, and writes ``bench/results/<profile>.json``,
``bench/results/summary.md`` and PNG plots. Profiles:

- ``local``: the tiny models of ``configs/local.yaml`` (the laptop profile);
- ``heavy``: bigger random-weight models (a 6-layer GPT-2, 128-pixel images) so that compute is realistic.

Both compare the same models; the experiment variant is left out so every request hits the same text model.
The machine is shared and noisy: ratios matter more than absolute times. No test asserts a timing; targets
are printed as pass/miss.

    make bench                                  (both profiles)
    python -m bench.run --profile local --quick (the smoke run the tests use)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
APP = "content-studio"


@dataclass
class Settings:
    """How much of each measurement to run (``quick`` keeps the smoke run to a minute or two)."""

    pipeline_c1: int = 8
    pipeline_c8: int = 24
    token_requests: int = 32
    token_max: int = 64
    ttft_requests: int = 4
    ttft_tokens: int = 128
    hop_calls: int = 40

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            pipeline_c1=2, pipeline_c8=8, token_requests=16, token_max=8, ttft_requests=1, ttft_tokens=16, hop_calls=5
        )


# --- configs ----------------------------------------------------------------------------------------------
def ensure_heavy_text(root: Path) -> Path:
    """A 6-layer, 384-wide GPT-2 with random weights (about 11 M parameters plus embeddings)."""
    from scripts.build_tiny_models import build_text

    out = root / ".cache" / "models" / "heavy" / "text"
    if not (out / "config.json").exists():
        build_text(out, n_embd=384, n_layer=6, n_head=6, n_positions=512)
    return out


def bench_config(profile: str, root: Path) -> dict[str, Any]:
    """The local profile without the experiment (every request hits one text model); heavier models for
    ``heavy``. Returns a Serve config."""
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    app = config["applications"][0]
    app["args"] = {}
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "text-b"]
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["ingress"]["user_config"].pop("experiments", None)
    for d in app["deployments"]:  # the bench measures one replica per model; no autoscaling mid-run
        if "autoscaling_config" in d:
            d.pop("autoscaling_config")
            d["num_replicas"] = 1
    # The text model under test gets the machine's cores (torch sizes its threads to them), as the in-process
    # ceiling and the baseline have, and room for a batch of 16.
    deployments["text"].update(max_ongoing_requests=16, max_queued_requests=64)
    deployments["text"]["ray_actor_options"]["num_cpus"] = os.cpu_count() or 1
    text = deployments["text"]["user_config"]
    text["max_tokens_limit"] = 256
    # Throughput setting: a window long enough for a burst of 16 to meet after crossing proxy and ingress on a
    # busy machine (a lone request pays it; the hop measurement below runs with no wait).
    text["batching"] = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
    if profile == "heavy":
        text["model"] = str(ensure_heavy_text(root).relative_to(root))
        image = deployments["image"]["user_config"]
        image.update(default_width=128, default_height=128, default_steps=4)
    return config


def with_text_batching(config: dict[str, Any], **batching: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    text = next(d for d in changed["applications"][0]["deployments"] if d["name"] == "text")
    text["user_config"]["batching"] = batching
    return changed


# --- processes and memory ---------------------------------------------------------------------------------
def app_processes() -> dict[str, Any]:
    """The app's Ray processes by role (each replica, the proxy, the controller), from this Ray instance's own
    state API (another Ray instance on the machine is not ours to count)."""
    import psutil
    from ray.util.state import list_actors

    found = {}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
        cls, pid = actor.class_name or "", actor.pid
        if cls.startswith(f"ServeReplica:{APP}:"):
            label = f"replica {cls.rsplit(':', 1)[1]} ({pid})"
        elif cls == "ProxyActor":
            label = f"proxy ({pid})"
        elif cls == "ServeController":
            label = f"controller ({pid})"
        else:
            continue
        found[label] = psutil.Process(pid)
    return found


class MemorySampler:
    """Peak RSS and PSS of a set of processes, sampled in a thread."""

    def __init__(self, processes: dict[str, Any], interval: float = 0.5) -> None:
        self.processes, self.interval = processes, interval
        self.peak: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, dict[str, int]]:
        now = {}
        for label, proc in self.processes.items():
            try:
                info = proc.memory_full_info()
            except Exception:
                continue
            now[label] = {"rss": int(info.rss), "pss": int(getattr(info, "pss", info.rss))}
            peak = self.peak.setdefault(label, {"rss": 0, "pss": 0})
            peak["rss"], peak["pss"] = max(peak["rss"], now[label]["rss"]), max(peak["pss"], now[label]["pss"])
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def totals(memory: dict[str, dict[str, int]]) -> dict[str, float]:
    return {
        "rss_gb": round(sum(m["rss"] for m in memory.values()) / 2**30, 3),
        "pss_gb": round(sum(m["pss"] for m in memory.values()) / 2**30, 3),
    }


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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_pipeline(url: str, s: Settings) -> dict[str, float]:
    body = lambda n: {"topic": f"a harbour town, part {n}", "user_id": f"user-{n % 60}"}  # noqa: E731
    load(url, "/v1/content", [body(0)], 1)  # warm-up
    lat, _, _ = load(url, "/v1/content", [body(n) for n in range(s.pipeline_c1)], 1)
    _, wall, _ = load(url, "/v1/content", [body(n) for n in range(s.pipeline_c8)], 8)
    return {"p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "throughput_c8_rps": s.pipeline_c8 / wall}


def measure_tokens(url: str, s: Settings, concurrency: int = 16) -> dict[str, float]:
    bodies = [
        {"prompt": f"Chapter {n}:", "max_tokens": s.token_max, "min_tokens": s.token_max, "temperature": 0}
        for n in range(s.token_requests)
    ]
    load(url, "/v1/completions", bodies[:2], 2)  # warm-up
    _, wall, answers = load(url, "/v1/completions", bodies, concurrency)
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {"tokens_per_s": tokens / wall, "tokens": tokens, "wall_s": wall}


def measure_ttft(url: str, s: Settings) -> dict[str, float]:
    firsts, wholes = [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for n in range(s.ttft_requests + 1):
            body = {
                "prompt": f"Once, {n}",
                "max_tokens": s.ttft_tokens,
                "min_tokens": s.ttft_tokens,
                "temperature": 0,
                "stream": True,
            }
            started = time.perf_counter()
            first = None
            with client.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter() - started
            if n:  # the first one warms up
                firsts.append(first or 0.0)
                wholes.append(time.perf_counter() - started)
    ttft, full = statistics.median(firsts), statistics.median(wholes)
    return {"ttft_s": ttft, "full_s": full, "ttft_share": ttft / full}


def measure_hops(url: str, engine: Any, s: Settings) -> dict[str, float]:
    """One-token generation: in this process, through a DeploymentHandle, over HTTP (medians, ms)."""
    from ray import serve

    from deployments.text import TextRequest

    request = TextRequest(prompt="Hello", max_tokens=1, temperature=0)
    handle = serve.get_deployment_handle("text", app_name=APP)

    def timed(call: Any) -> float:
        call()  # warm-up
        samples = []
        for _ in range(s.hop_calls):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
    with httpx.Client(base_url=url, timeout=60) as client:
        direct = timed(lambda: engine.generate(request))
        through_handle = timed(lambda: handle.generate.remote(request).result())
        bare_handle = timed(lambda: handle.describe.remote().result())  # the hop alone: no model, no batching
        over_http = timed(lambda: client.post("/v1/completions", json=body).raise_for_status())
    return {
        "direct_ms": direct,
        "handle_ms": through_handle,
        "http_ms": over_http,
        "handle_hop_ms": through_handle - direct,
        "bare_handle_ms": bare_handle,
        "http_over_handle_ms": over_http - through_handle,
    }


def measure_ceiling(engine: Any, s: Settings, batch: int = 16) -> dict[str, float]:
    """The same model's best in-process batched ``generate`` on this machine: the serving layer's ceiling."""
    from deployments.text import TextRequest

    prepared = lambda: [  # noqa: E731
        engine.prepare(
            TextRequest(prompt=f"Chapter {n}:", max_tokens=s.token_max, min_tokens=s.token_max, temperature=0)
        )
        for n in range(batch)
    ]
    engine.run_batch(prepared()[:2])  # warm-up
    started, tokens = time.perf_counter(), 0
    for _ in range(max(1, s.token_requests // batch)):
        tokens += sum(r.completion_tokens for r in engine.run_batch(prepared()))
    return {"tokens_per_s": tokens / (time.perf_counter() - started)}


# --- the run ----------------------------------------------------------------------------------------------
def start_ray() -> str:
    import ray

    from scripts.serve_local import free_port

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only bench instance
    port = free_port()
    ray.init(
        address="local",
        num_cpus=(os.cpu_count() or 1) + 2,  # the text replica takes the cores; the rest share the remainder
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        logging_level="ERROR",
        log_to_driver=False,
    )
    return f"http://127.0.0.1:{port}"


def deploy(config: dict[str, Any], dashboard: str, folder: Path, name: str) -> str:
    from scripts.serve_local import serve_cli

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli("deploy", str(path), dashboard=dashboard)
    return str(path)


def start_baseline(config: dict[str, Any], root: Path, folder: Path) -> tuple[subprocess.Popen, str]:
    from scripts.serve_local import free_port

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
    import ray
    from ray import serve

    from deployments.text import TextConfig, TextGenerator
    from scripts.build_tiny_models import ensure_tiny_models
    from scripts.serve_local import free_port, session_config, wait_healthy

    ensure_tiny_models()
    out: dict[str, Any] = {"profile": profile, "settings": settings.__dict__, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")  # the models; data goes to the temp folder
        config = session_config(bench_config(profile, ROOT), folder, free_port())
        url = f"http://127.0.0.1:{config['http_options']['port']}"
        dashboard = start_ray()
        baseline = None
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
                out["tokens_c16"] = {"batched": measure_tokens(url, settings)}
                out["streaming"] = measure_ttft(url, settings)
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

            text_cfg = TextConfig.model_validate(
                next(d for d in config["applications"][0]["deployments"] if d["name"] == "text")["user_config"]
            )
            os.environ["CONTENT_STUDIO_ROOT"] = str(folder)
            engine = TextGenerator(text_cfg)  # the same model, in this process
            out["serving_ceiling"] = measure_ceiling(engine, settings)
            # Handle and HTTP hops without a batch wait (a lone request would otherwise wait for company).
            deploy(
                with_text_batching(config, max_batch_size=8, batch_wait_timeout_s=0.0),
                dashboard,
                folder,
                "nowait",
            )
            time.sleep(3)
            out["hops"] = measure_hops(url, engine, settings)
            deploy(
                with_text_batching(config, max_batch_size=1, batch_wait_timeout_s=0.0),
                dashboard,
                folder,
                "nobatch",
            )
            time.sleep(3)
            out["tokens_c16"]["unbatched"] = measure_tokens(url, settings)
        finally:
            if baseline is not None:
                baseline.terminate()
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
    out["ratios"] = ratios(out)
    out["targets"] = targets(out)
    return out


def machine() -> dict[str, Any]:
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def ratios(r: dict[str, Any]) -> dict[str, float]:
    p, t = r["pipeline"], r["tokens_c16"]
    return {
        "throughput_vs_baseline": p["app"]["throughput_c8_rps"] / p["baseline"]["throughput_c8_rps"],
        "p50_vs_baseline": p["app"]["p50_s"] / p["baseline"]["p50_s"],
        "batching_speedup": t["batched"]["tokens_per_s"] / t["unbatched"]["tokens_per_s"],
        "ttft_share": r["streaming"]["ttft_share"],
        "handle_hop_ms": r["hops"]["handle_hop_ms"],
        "serving_efficiency": t["batched"]["tokens_per_s"] / r["serving_ceiling"]["tokens_per_s"],
        "app_pss_gb_under_load": r["memory_under_load"]["app_total"]["pss_gb"],
        "app_rss_gb_under_load": r["memory_under_load"]["app_total"]["rss_gb"],
    }


TARGETS = {  # name: (ratio, comparison, bound, profile it applies to)
    "pipeline throughput >= 1.5x baseline at c=8": ("throughput_vs_baseline", ">=", 1.5, "heavy"),
    "pipeline p50 <= 1.1x baseline at c=1": ("p50_vs_baseline", "<=", 1.1, "heavy"),
    "batching >= 3x tokens/s at c=16": ("batching_speedup", ">=", 3.0, "heavy"),
    "time to first token <= 15% of a 128-token completion": ("ttft_share", "<=", 0.15, "heavy"),
    "<= 5 ms added per handle hop": ("handle_hop_ms", "<=", 5.0, "heavy"),
    "serving efficiency >= 0.8": ("serving_efficiency", ">=", 0.8, "heavy"),
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
    (
        "text tokens/s at c=16, batched / unbatched",
        ["tokens_c16.batched.tokens_per_s", "tokens_c16.unbatched.tokens_per_s"],
        "{:.0f}",
    ),
    ("batching speed-up", ["ratios.batching_speedup"], "{:.2f}x"),
    ("in-process batched ceiling (tokens/s)", ["serving_ceiling.tokens_per_s"], "{:.0f}"),
    ("serving efficiency (HTTP c=16 / ceiling)", ["ratios.serving_efficiency"], "{:.2f}"),
    ("time to first token / whole completion (s)", ["streaming.ttft_s", "streaming.full_s"], "{:.3f}"),
    ("time to first token share", ["ratios.ttft_share"], "{:.1%}"),
    ("1-token call: direct / handle / HTTP (ms)", ["hops.direct_ms", "hops.handle_ms", "hops.http_ms"], "{:.1f}"),
    ("added per handle hop (ms)", ["hops.handle_hop_ms"], "{:.1f}"),
    ("a bare handle round trip, no model (ms)", ["hops.bare_handle_ms"], "{:.1f}"),
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
    (
        "text tokens/s at c=16",
        "tokens/s",
        ("batched", "tokens_c16.batched.tokens_per_s"),
        ("unbatched", "tokens_c16.unbatched.tokens_per_s"),
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
    (args.out / "summary.md").write_text(table)
    plots(results, args.out)
    print(table)


if __name__ == "__main__":
    main()
