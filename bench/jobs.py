"""A burst of content jobs through the C edge: every one accepted at once, every one made, none twice; the queue's
depth and the consumer's replicas over time (``bench/results/jobs.{json,md,png}``).

The local profile (tiny models) with its jobs, on a private append-only ``redis-server`` of the bench's own (as
``make run`` starts one), and the C edge in front. ``h2load`` sends the submissions (a Python client opening
hundreds of connections on 2 cores adds seconds of its own). Then the bench watches the queue drain: its depth
(the broker's list), the consumer's running replicas (the controller's), and the jobs' states (the table).

    python -m bench.jobs [--jobs 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.burst import h2load_burst
from bench.harness import RESULTS, ROOT, deploy, local_ray, machine, pct


def jobs_config(folder: Path, broker: str) -> dict[str, Any]:
    """The local profile with its jobs on ``broker`` (the experiment left out: one text model)."""
    from app.deploy import free_port, session_config

    config = session_config(ROOT / "configs" / "local.yaml", folder, free_port())
    app = config["applications"][0]
    app["args"].pop("variants", None)
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "text-b"]
    ingress = next(d for d in app["deployments"] if d["name"] == "ingress")
    ingress["user_config"].pop("experiments", None)
    app["args"]["jobs"]["broker_url"] = broker
    consumer = next(d for d in app["deployments"] if d["name"] == "jobs")
    consumer["autoscaling_config"]["policy"]["policy_kwargs"]["broker_url"] = broker
    return config


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    from app.deploy import free_port

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is missing: `make setup` installs it (apt)")
    port = free_port()
    data = folder / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.2)
    proc.terminate()
    raise TimeoutError("the bench's redis-server did not start")


def watch(url: str, broker: str, queue: str, expected: int, timeout: float) -> list[dict[str, Any]]:
    """Once a second until no job is queued or running: queue depth, consumer replicas, jobs by state."""
    import redis
    from ray import serve

    client, timeline, started = redis.Redis.from_url(broker), [], time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() - started < timeout:
            states = {
                s: len(http.get("/v1/jobs", params={"state": s, "limit": 500}).json()) for s in ("queued", "running")
            }
            status = serve.status().applications["content-studio"].deployments["jobs"]
            timeline.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    "depth": client.llen(queue),
                    "replicas": status.replica_states.get("RUNNING", 0),
                    **states,
                }
            )
            if not states["queued"] and not states["running"] and len(timeline) > 3:
                return timeline
            time.sleep(1)
    raise TimeoutError(f"{expected} jobs not done within {timeout}s: {timeline[-1]}")


def run(n: int) -> dict[str, Any]:
    from app.deploy import edge_url, wait_healthy
    from offline.tiny_models import ensure_tiny_models

    ensure_tiny_models()
    out: dict[str, Any] = {"machine": machine(), "jobs": n}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        folder = Path(tmp)
        (folder / ".cache").symlink_to(ROOT / ".cache")
        redis_proc, broker = start_redis(folder)
        try:
            config = jobs_config(folder, broker)
            queue = config["applications"][0]["args"]["jobs"]["queue_name"]
            with local_ray() as dashboard:
                deploy(config, dashboard, folder, "jobs")
                url = f"http://127.0.0.1:{config['http_options']['port']}"
                wait_healthy(url)
                edge = edge_url(config) or url
                wait_healthy(edge)
                with httpx.Client(base_url=url, timeout=60) as http:
                    before = http.get("/v1/content", params={"limit": 1}).json()["total"]
                body = {"topic": "a harbour town at dawn", "user_id": "bench"}
                started = time.monotonic()
                out["burst"] = h2load_burst(edge, "/v1/jobs", body, n, accepted=202)
                out["timeline"] = watch(url, broker, queue, n, timeout=3600)
                out["drained_s"] = round(time.monotonic() - started, 1)
                with httpx.Client(base_url=url, timeout=60) as http:
                    done = http.get("/v1/jobs", params={"state": "complete", "limit": 500}).json()
                    total = http.get("/v1/content", params={"limit": 1}).json()["total"]
        finally:
            redis_proc.terminate()
            redis_proc.wait(30)
    waits = [j["started_at"] - j["created_at"] for j in done if j["started_at"]]
    spans = [j["finished_at"] - j["created_at"] for j in done if j["finished_at"]]
    out.update(
        complete=len(done),
        contents_made=total - before,
        distinct_contents=len({j["content_id"] for j in done}),
        wait_p50_s=pct(waits, 0.5),
        wait_p95_s=pct(waits, 0.95),
        complete_p50_s=pct(spans, 0.5),
        complete_p95_s=pct(spans, 0.95),
        max_replicas=max(p["replicas"] for p in out["timeline"]),
        max_depth=max(p["depth"] for p in out["timeline"]),
    )
    return out


def markdown(r: dict[str, Any]) -> str:
    b = r["burst"]
    return (
        f"| jobs sent | accepted (202) | 202 p50 / p95 (ms) | complete | contents made | distinct | drained (s) | "
        f"wait in queue p50 / p95 (s) | submitted to complete p50 / p95 (s) | consumer replicas max | depth max |\n"
        f"|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {r['jobs']} | {b['served']} | {b['served_p50_ms']:.0f} / {b['served_p95_ms']:.0f} | {r['complete']} | "
        f"{r['contents_made']} | {r['distinct_contents']} | {r['drained_s']} | {r['wait_p50_s']:.0f} / "
        f"{r['wait_p95_s']:.0f} | {r['complete_p50_s']:.0f} / {r['complete_p95_s']:.0f} | {r['max_replicas']} | "
        f"{r['max_depth']} |\n"
    )


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t"] for p in r["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["depth"] for p in r["timeline"]], label="queue depth (broker)")
    ax.plot(t, [p["queued"] for p in r["timeline"]], label="jobs queued (table)", linestyle=":")
    ax.set_xlabel("seconds after the burst")
    ax.set_ylabel("jobs")
    twin = ax.twinx()
    twin.step(t, [p["replicas"] for p in r["timeline"]], color="black", label="consumer replicas", where="post")
    twin.set_ylabel("consumer replicas")
    twin.set_ylim(0, max(3, r["max_replicas"] + 1))
    fig.legend(loc="upper right")
    ax.set_title(f"{r['jobs']} content jobs: the queue drains, the consumer scales")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jobs.json").write_text(json.dumps(result, indent=2))
    (args.out / "jobs.md").write_text(markdown(result))
    plot(result, args.out / "jobs.png")
    print(markdown(result))
    print(yaml.safe_dump({k: v for k, v in result.items() if k != "timeline"}), file=sys.stderr)


if __name__ == "__main__":
    main()
