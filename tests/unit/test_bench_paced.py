"""The LLM bench's paced streams: the engine-alone reference paces and counts as the replica and the HTTP client
do, and the report reads a streams target only where that reference keeps pace (no timing is asserted beyond the
pace the bench itself waits)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.llm_paced import PACES_S, paced_in_process
from bench.llm_report import llm_ratios, llm_targets, markdown
from deployments.text import TextService


def test_the_engine_alone_is_paced_and_timed_like_the_replica(text_service: TextService) -> None:
    result = paced_in_process(text_service, counts=(1, 3), tokens=4)
    assert set(result) == {f"{pace * 1000:.0f}" for pace in PACES_S}
    for ms, paced in result.items():
        for count, measured in paced["by_streams"].items():
            assert measured["requests"] == int(count) and measured["output_tokens"] == 4 * int(count)
            # the service lets the k-th token out no sooner than k paces after the first (less the first one's
            # way to the reader, a fraction of a millisecond): tokens come no faster than the pace
            assert measured["tpot_p50_ms"] >= 0.9 * float(ms)
            # the host's CPU is counted (in ticks of 10 ms: a tiny model's few tokens may cost less than one)
            assert measured["host_cpu_ms_per_token"] >= 0
        low, high = (paced["by_streams"][c]["tpot_p50_ms"] for c in ("1", "3"))
        assert paced["tpot_ratio"] == pytest.approx(high / low)
    assert text_service.config.faults.stream_delay_s == 0  # the pacing was the bench's, and is undone


def streams(tpot_8: float, tpot_64: float, **cpu_ms: float) -> dict[str, Any]:
    by_streams = {
        "8": {"tpot_p50_ms": tpot_8, "chunks_per_token": 1.0, **cpu_ms},
        "64": {"tpot_p50_ms": tpot_64, "chunks_per_token": 0.5, **cpu_ms},
    }
    return {"50": {"by_streams": by_streams, "tpot_ratio": tpot_64 / tpot_8}}


def result(engine_tpot_64: float) -> dict[str, Any]:
    """A --direct-ingress-only result: over HTTP 64 streams at 1.5x of 8; the engine alone at ``engine_tpot_64``."""
    r = {
        "profile": "heavy",
        "ceiling": {"output_tokens_per_s": 300.0},
        "engine_paced": streams(50.0, engine_tpot_64, host_cpu_ms_per_token=1.5),
        "direct_ingress": {
            "efficiency": {"efficiency": 0.9, "served": [270.0], "ratios": [0.9]},
            "hop": {"http_ms": 9.0, "bare_http_ms": 1.0, "direct_ms": 5.0, "http_added_ms": 3.0},
            "paced_streams": streams(50.0, 75.0, host_cpu_ms_per_token=2.5, text_replica_cpu_ms_per_token=1.75),
        },
    }
    r["ratios"] = llm_ratios(r)
    r["targets"] = llm_targets(r)
    return r


def test_a_streams_target_is_read_only_where_the_engine_alone_keeps_pace() -> None:
    kept = result(engine_tpot_64=51.0)
    (name,) = [n for n in kept["targets"] if "paced at 50 ms" in n]
    # the verdict, and the CPU a token over HTTP of the most streams: the text replica's and the rest of the host's,
    # beside the engine alone's
    assert kept["targets"][name] == {
        "value": 1.5,
        "bound": 1.1,
        "pass": False,
        "streams": 64,
        "text_replica_cpu_ms": 1.75,
        "rest_cpu_ms": 0.75,
        "engine_cpu_ms": 1.5,
    }
    assert f"- llm: MISS: {name}" in markdown(kept)
    assert "CPU a token of 64 streams: text replica 1.75 ms (the engine alone 1.5), the rest 0.75)" in markdown(kept)

    engine_bound = result(engine_tpot_64=150.0)  # the host's engine makes a third of what 64 streams ask
    target = engine_bound["targets"][name]
    assert target["pass"] is None and target["engine_bound"] and target["engine"] == 3.0
    assert "- llm: not readable here (the engine alone, in process, is 3.0x" in markdown(engine_bound)
    # the other targets are read as before, and only the sections measured are reported
    efficiency = "serving efficiency >= 0.85, the edge onto the ingress replicas (direct ingress)"
    assert engine_bound["targets"][efficiency]["pass"]
    assert not any("static" in n or "Serve's proxy" in n for n in engine_bound["targets"])
