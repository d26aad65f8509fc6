"""GPU check: deploy the tiny profile with real GPU allocation and report device, dtype, memory and latency.

    python -m scripts.gpu_check                 # on a machine with a CUDA GPU; fails unless models run on CUDA
    python -m scripts.gpu_check --fake-gpus 1   # dry run anywhere: Ray advertises a GPU, models fall back to CPU

It starts its own Ray instance, deploys ``configs/one-gpu.yaml`` (fractional GPUs, one card shared by all
models) with the tiny models in float16 via ``serve deploy``, calls every service through its handle a few
times, prints a table and writes ``gpu_check.json`` (``--out``). Takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from app.deploy import ROOT, load, tiny_variant
from offline.tiny_models import DEFAULT_OUT, ensure_tiny_models

APP = "gpu-check"


def _requests() -> dict[str, tuple[str, Any]]:
    from deployments.image import ImageRequest
    from deployments.recommend import RecommendRequest
    from deployments.text import TextRequest
    from deployments.voice import VoiceRequest

    return {
        "text": ("generate", TextRequest(prompt="A lighthouse keeper", max_tokens=32, seed=0)),
        "image": ("generate", ImageRequest(prompt="a lighthouse", width=128, height=128, steps=4, seed=0)),
        "voice": ("synthesize", VoiceRequest(input="Hello from the lighthouse. The sea is calm tonight.", seed=0)),
        "recommend": ("recommend", RecommendRequest(user_id="user-1", k=10)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "one-gpu.yaml"), help="GPU profile to check")
    parser.add_argument("--fake-gpus", type=int, default=0, help="advertise N GPUs to Ray (dry run without CUDA)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per service")
    parser.add_argument("--out", default="gpu_check.json", help="where to write the JSON report")
    args = parser.parse_args()

    import ray
    from ray import serve

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_tiny_models(DEFAULT_OUT)
    started = time.perf_counter()
    # Enough logical CPUs for every replica's small request, even on a 2-core machine.
    init: dict[str, Any] = {
        "address": "local",
        "num_cpus": max(os.cpu_count() or 1, 4),
        "include_dashboard": True,
        "dashboard_port": 8269,
    }
    if args.fake_gpus:
        init["num_gpus"] = args.fake_gpus
    ray.init(**init, logging_level="WARNING")
    app = tiny_variant(load(args.config), name=APP, route_prefix="/gpu-check", num_cpus=0.25, dtype="float16")
    config = {"http_options": {"host": "127.0.0.1", "port": 8009}, "applications": [app]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(config, fh)
    serve_cli = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve_cli), "deploy", fh.name, "--address", "http://127.0.0.1:8269"], check=True)
    deadline = time.monotonic() + 300
    while serve.status().applications.get(APP) is None or serve.status().applications[APP].status != "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gpu-check app did not start: {serve.status().applications.get(APP)}")
        time.sleep(1)
    ready_s = time.perf_counter() - started

    report: dict[str, Any] = {"ready_s": round(ready_s, 1), "config": args.config, "services": {}}
    for name, (method, request) in _requests().items():
        handle = serve.get_deployment_handle(name, APP)
        getattr(handle, method).remote(request).result(timeout_s=300)  # warm-up (CUDA kernels, caches)
        latencies = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            getattr(handle, method).remote(request).result(timeout_s=300)
            latencies.append((time.perf_counter() - t0) * 1000)
        info = handle.describe.remote().result(timeout_s=60)
        report["services"][name] = {
            "device": info["device"],
            "dtype": info.get("dtype"),
            "gpu_ids": info["gpu_ids"],
            "cuda_visible_devices": info["cuda_visible_devices"],
            "gpu_memory_mb": round(info["gpu_memory_bytes"] / 2**20, 1) if info.get("gpu_memory_bytes") else None,
            "latency_ms_p50": round(statistics.median(latencies), 1),
            "latency_ms_max": round(max(latencies), 1),
        }
    serve.shutdown()
    ray.shutdown()

    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"ready in {report['ready_s']} s  ({args.config})")
    print(f"{'service':<10} {'device':<7} {'dtype':<9} {'gpu_ids':<8} {'GPU MB':>7} {'p50 ms':>8} {'max ms':>8}")
    for name, row in report["services"].items():
        print(
            f"{name:<10} {row['device']:<7} {row['dtype'] or '-':<9} {','.join(row['gpu_ids']) or '-':<8} "
            f"{row['gpu_memory_mb'] or '-':>7} {row['latency_ms_p50']:>8} {row['latency_ms_max']:>8}"
        )
    gpu_models = [n for n in ("text", "image", "voice") if report["services"][n]["gpu_ids"]]
    on_cuda = all(report["services"][n]["device"] == "cuda" for n in gpu_models)
    if not args.fake_gpus and not (gpu_models and on_cuda):
        print("FAIL: the GPU models are not running on CUDA", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
