"""guidellm (the vLLM project's benchmark client) against our OpenAI routes: it checks /health, then sends
`ignore_eos`, `stop: null`, `max_completion_tokens` and `stream_options` (with vLLM's continuous usage stats)
on /v1/chat/completions. A short run of each profile completes with zero errored requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MIXED = (
    "kind=synthetic_text,prompt_tokens=32,prompt_tokens_stdev=16,prompt_tokens_min=8,prompt_tokens_max=64,"
    "output_tokens=24,output_tokens_stdev=12,output_tokens_min=8,output_tokens_max=48"
)


@pytest.mark.parametrize("profile", ["kind=concurrent,streams=4"])  # streams at once: the harder case
def test_a_guidellm_run_completes_without_errors(base_url: str, tiny_models: Path, tmp_path: Path, profile) -> None:
    out = tmp_path / "guidellm.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("guidellm")), "run",
            "--backend", f"kind=openai_http,target={base_url},model=tiny-gpt2",
            "--profile", profile,
            "--constraint", "kind=max_duration,seconds=6",
            "--data", MIXED,
            "--tokenizer", f"kind=hf_auto,model={tiny_models / 'text'}",
            "--output", f"kind=json,path={out}",
            "--disable-console-interactive",
        ],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    benchmark = json.loads(out.read_text())["benchmarks"][-1]
    totals = benchmark["metrics"]["request_totals"]
    errors = [r.get("info", {}).get("error") or r.get("error") for r in benchmark["requests"]["errored"][:3]]
    assert totals["errored"] == 0, errors
    assert totals["successful"] >= 3
    output_tokens = benchmark["metrics"]["output_token_count"]["successful"]
    assert output_tokens["min"] >= 8 and output_tokens["max"] <= 48  # mixed lengths, each as asked (ignore_eos)
