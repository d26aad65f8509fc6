"""What every benchmark shares: its Ray instance, the app's Serve config per profile, deploying it, the app's
processes and their memory, and percentiles. The benchmarks (run, llm, soak, recs) import it; nothing here
imports them."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
APP = "content-studio"


# --- configs ----------------------------------------------------------------------------------------------
def ensure_heavy_text(root: Path) -> Path:
    """A 6-layer, 384-wide GPT-2 with random weights (about 11 M parameters plus embeddings)."""
    from offline.tiny_models import build_text

    out = root / ".cache" / "models" / "heavy" / "text"
    if not (out / "config.json").exists():
        build_text(out, n_embd=384, n_layer=6, n_head=6, n_positions=512, train_steps=0)
    return out


def bench_config(profile: str, root: Path) -> dict[str, Any]:
    """The local profile without the experiment (every request hits one text model) and with the four model
    services the pipeline calls, as the all-in-one baseline loads them (no ``embed``, which the local
    recommender does not call); heavier models for ``heavy``. Returns a Serve config."""
    from app.deploy import only

    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    app = config["applications"][0]
    app["args"] = {}  # no A/B variant (text-b)
    only(app, ("text", "image", "voice", "recommend", "pipeline"))
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["ingress"]["user_config"].pop("experiments", None)
    for d in app["deployments"]:  # the bench measures one replica per model; no autoscaling mid-run
        if "autoscaling_config" in d:
            d.pop("autoscaling_config")
            d["num_replicas"] = 1
    # The text model under test gets the machine's cores (torch sizes its threads to them), as the in-process
    # ceiling and the baseline have; Serve holds as many requests as the engine has running + waiting places.
    deployments["text"].update(max_ongoing_requests=48, max_queued_requests=64)
    deployments["text"]["ray_actor_options"]["num_cpus"] = os.cpu_count() or 1
    text = deployments["text"]["user_config"]
    text["max_tokens_limit"] = 256
    if profile == "heavy":
        text["model"] = str(ensure_heavy_text(root).relative_to(root))
        image = deployments["image"]["user_config"]
        image.update(default_width=128, default_height=128, default_steps=4)
    return config


def ensure_heavy_voice(root: Path) -> Path:
    """A VITS of Coqui's own sizes with random weights (about 40 M parameters): it speaks at a real model's pace
    on a CPU (a sentence of a few seconds takes a second or two here), where the tiny one takes milliseconds."""
    from offline.tiny_models import build_voice

    out = root / ".cache" / "models" / "heavy" / "voice"
    if not (out / "config.json").exists():
        build_voice(out, sizes={})
    return out


# --- processes and memory ---------------------------------------------------------------------------------
def app_processes() -> dict[str, Any]:
    """The app's Ray processes by role (each replica, the proxy, the controller), from this Ray instance's own
    state API (another Ray instance on the machine is not ours to count)."""
    import psutil
    import ray
    from ray.util.state import list_actors

    found = {}
    ours = ray.get_runtime_context().gcs_address  # named: with another Ray on the machine, no address is ambiguous
    for actor in list_actors(address=ours, filters=[("state", "=", "ALIVE")], limit=1000):
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


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """A Ray instance of the benchmark's own, on loopback; yields its dashboard's URL (``serve deploy`` goes
    there). ``env`` holds switches that are per Ray instance (Serve's direct ingress): set for the instance's
    processes, and put back afterwards; without it the instance runs Serve's proxy, whatever this process's
    environment says (the test session's turns direct ingress on). Serve and Ray stop when the block ends,
    whatever happened in it."""
    import ray
    from ray import serve

    from app.deploy import free_port

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only bench instance
    env = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", **(env or {})}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    port = free_port()
    ray.init(
        address="local",
        # By default the text replica takes the cores; the rest share the remainder.
        num_cpus=num_cpus or (os.cpu_count() or 1) + 2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def deploy(config: dict[str, Any], dashboard: str, folder: Path, name: str) -> str:
    from app.deploy import serve_cli

    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli("deploy", str(path), dashboard=dashboard)
    return str(path)


def settle(idle_share: float = 0.85, window_s: float = 2.0, limit_s: float = 90.0) -> float:
    """Wait until the machine's CPUs are mostly idle (the app's other replicas done starting: loading models,
    training, warming up), at most ``limit_s``; returns the idle share last seen. A measurement taken right after
    a deploy otherwise counts their start-up against whatever runs first (measured: serving efficiency 0.76 just
    after a deploy, 0.92 on the same app a few minutes later)."""
    import time

    import psutil

    deadline = time.monotonic() + limit_s
    while True:
        idle = psutil.cpu_times_percent(interval=window_s).idle / 100
        if idle >= idle_share or time.monotonic() >= deadline:
            return idle


def busy_cpu_s() -> float:
    """CPU seconds the whole host has been busy (every core, every process: the replicas, the edge, Ray's own
    and the client) since it started; the difference of two readings is what a measurement cost the host."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of what was measured, nearest rank; NaN when nothing was."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> dict[str, Any]:
    import platform

    import psutil

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }
