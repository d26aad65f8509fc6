"""The benchmark harness runs end to end with tiny settings (so it cannot rot); no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run import ROWS, TARGETS, get

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
def test_the_harness_runs_and_writes_every_result(tmp_path: Path) -> None:
    # Its own Ray instance and baseline process, beside the session's cluster (as `make bench` runs alone).
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--profile", "local", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "local.json").read_text())
    for _, paths, _ in ROWS:  # every number of the table was measured (times, rates and memory are all positive)
        for path in paths:
            assert get(result, path) > 0, path
    assert result["pipeline"]["app"]["throughput_c8_rps"] > 0 and result["pipeline"]["baseline"]["p50_s"] > 0
    assert any(label.startswith("replica text") for label in result["memory_under_load"]["app"])
    assert any(label.startswith("proxy") for label in result["memory_under_load"]["app"])
    local_targets = {name for name, spec in TARGETS.items() if spec[3] == "local"}
    assert set(result["targets"]) == local_targets
    summary = (tmp_path / "summary.md").read_text()
    assert "| pipeline p50 at c=1, app / baseline (s) |" in summary and summary in done.stdout
    assert (tmp_path / "comparison.png").stat().st_size > 0 and (tmp_path / "memory-local.png").stat().st_size > 0
