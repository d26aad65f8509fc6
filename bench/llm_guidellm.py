"""guidellm (the vLLM project's benchmark client) against our ``/v1/completions``: one run as a subprocess, and the
numbers we report from its JSON. Used by bench/llm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.llm_load import MODEL


def guidellm(
    url: str, tokenizer: Path, profile: str, lengths: tuple[int, int], seconds: int, out: Path
) -> dict[str, Any]:
    """One guidellm run of ``seconds`` against /v1/completions, prompts and outputs of ``lengths`` (least, most)
    tokens; its request counts and headline metrics."""
    least, most = lengths
    mid = (least + most) // 2
    data = (
        f"kind=synthetic_text,prompt_tokens={mid},prompt_tokens_stdev={mid // 2},prompt_tokens_min={least},"
        f"prompt_tokens_max={most},output_tokens={mid},output_tokens_stdev={mid // 2},"
        f"output_tokens_min={least},output_tokens_max={most}"
    )
    path = out / f"guidellm-{profile.split(',')[0].split('=')[1]}.json"
    cmd = [
        str(Path(sys.executable).with_name("guidellm")), "run",
        "--backend", f"kind=openai_http,target={url},model={MODEL}",
        "--profile", profile,
        "--constraint", f"kind=max_duration,seconds={seconds}",
        "--data", data,
        "--tokenizer", f"kind=hf_auto,model={tokenizer}",
        "--output", f"kind=json,path={path}",
        "--disable-console-interactive",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 180, env=env)
    if done.returncode:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    return read_guidellm(path)


def read_guidellm(path: Path) -> dict[str, Any]:
    """The numbers we report from guidellm's JSON (its layout differs between releases: look them up)."""
    report = json.loads(path.read_text())
    bench = report["benchmarks"][-1]
    totals = bench.get("request_totals") or bench.get("metrics", {}).get("request_totals") or {}
    metrics = bench.get("metrics", {})

    def stat(name: str, field: str = "median") -> float | None:
        entry = metrics.get(name, {})
        entry = entry.get("successful", entry) if isinstance(entry, dict) else {}
        value = entry.get(field) if isinstance(entry, dict) else None
        return float(value) if isinstance(value, int | float) else None

    # What guidellm actually sent: 0.8.1's poisson profile (10 worker processes here) sends requests ahead of
    # their targeted times, so the load offered can be several times the rate asked (docs/benchmarks.md).
    requests = bench.get("requests", {})
    sent = [
        r for kind in ("successful", "errored", "incomplete") for r in requests.get(kind, []) if isinstance(r, dict)
    ]
    started = sum(1 for r in sent if (r.get("info") or {}).get("timings", {}).get("request_start"))
    duration = bench.get("duration") or 0
    return {
        "successful": totals.get("successful"),
        "errored": totals.get("errored"),
        "incomplete": totals.get("incomplete"),
        "requests_sent": started,
        "offered_requests_per_s": started / duration if duration else None,
        "output_tokens_per_s": stat("output_tokens_per_second", "mean"),
        "ttft_p50_ms": stat("time_to_first_token_ms"),
        "itl_p50_ms": stat("inter_token_latency_ms"),
        "requests_per_s": stat("requests_per_second", "mean"),
    }
