"""On a machine with a CUDA GPU (``pytest -m gpu``; `make test` leaves it out): the tiny profile with real GPU
allocation, every GPU model on CUDA in half precision, through the GPU check (scripts/gpu_check.py), which starts
a Ray instance of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_every_gpu_model_runs_on_cuda_with_its_share_of_the_card(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    services = json.loads(out.read_text())["services"]
    for name in ("text", "image", "voice"):  # one-gpu.yaml gives each a fraction of the card
        assert services[name]["device"] == "cuda" and services[name]["gpu_ids"], (name, services[name])
    for name in ("text", "image"):  # half precision on CUDA; Coqui's voices stay float32
        assert services[name]["dtype"] == "float16" and services[name]["gpu_memory_mb"], (name, services[name])
    assert services["recommend"]["device"] == "cpu"  # implicit's PyPI build computes on the CPU
