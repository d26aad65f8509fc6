"""The LLM serving benchmark's report: ratios against its targets, the markdown table and the plot."""

from __future__ import annotations

from pathlib import Path
from statistics import median
from typing import Any


def llm_ratios(r: dict[str, Any]) -> dict[str, float]:
    """The measured ratios the targets bound, of the sections the run measured (``--direct-ingress-only``: one)."""
    direct = r["direct_ingress"]
    ratios = {
        "direct_serving_efficiency": direct["efficiency"]["efficiency"],
        "direct_http_added_ms": direct["hop"]["http_added_ms"],
        **{f"direct_paced_tpot_ratio_{ms}": paced["tpot_ratio"] for ms, paced in direct["paced_streams"].items()},
        **{f"engine_paced_tpot_ratio_{ms}": paced["tpot_ratio"] for ms, paced in r.get("engine_paced", {}).items()},
    }
    if "continuous" not in r:
        return ratios
    cont, stat = r["continuous"], r["static"]
    half_c = cont["rates"].get("0.5", next(iter(cont["rates"].values())))
    half_s = stat["rates"].get("0.5", next(iter(stat["rates"].values())))
    return {
        "throughput_vs_static": cont["saturation"]["output_tokens_per_s"] / stat["saturation"]["output_tokens_per_s"],
        "streamed_throughput_vs_static": cont["saturation_streamed"]["output_tokens_per_s"]
        / stat["saturation_streamed"]["output_tokens_per_s"],
        "serving_efficiency": cont["efficiency"]["efficiency"],
        "streamed_serving_efficiency": cont["saturation_streamed"]["output_tokens_per_s"]
        / median(cont["efficiency"]["ceilings"]),
        "ttft_p95_half_rate_vs_static": half_c["ttft_p95_s"] / half_s["ttft_p95_s"],
        "ttft_share_128": cont["ttft_128"]["share"],
        "handle_added_ms": cont["hop"]["added_ms"],
        "http_added_ms": cont["hop"]["http_added_ms"],
        **{f"paced_tpot_ratio_{ms}": paced["tpot_ratio"] for ms, paced in cont["paced_streams"].items()},
        **ratios,
    }


LLM_TARGETS = {  # name: (ratio, comparison, bound)
    "output tokens/s at saturation >= 1.5x static": ("throughput_vs_static", ">=", 1.5),
    "serving efficiency (served / in-process ceiling) >= 0.85, through Serve's proxy": (
        "serving_efficiency",
        ">=",
        0.85,
    ),
    "serving efficiency >= 0.85, the edge onto the ingress replicas (direct ingress)": (
        "direct_serving_efficiency",
        ">=",
        0.85,
    ),
    "TTFT p95 at half saturation <= 0.3x static": ("ttft_p95_half_rate_vs_static", "<=", 0.3),
    "time to first token <= 10% of a 128-token completion": ("ttft_share_128", "<=", 0.10),
    "one-token call through a handle adds <= 5 ms over in-process": ("handle_added_ms", "<=", 5.0),
    "one-token completion over HTTP adds <= 5 ms over in-process + one bare HTTP round trip, through Serve's proxy": (
        "http_added_ms",
        "<=",
        5.0,
    ),
    "one-token completion over HTTP adds <= 5 ms, the edge onto the ingress replicas (direct ingress)": (
        "direct_http_added_ms",
        "<=",
        5.0,
    ),
}
PACED_TARGETS = {  # ratio key, before "_<pace in ms>": the path and the result's section it was measured in
    "paced_tpot_ratio": ("through Serve's proxy", "continuous"),
    "direct_paced_tpot_ratio": ("the edge onto the ingress replicas (direct ingress)", "direct_ingress"),
}


def llm_targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    targets = dict(LLM_TARGETS)
    for key in r["ratios"]:
        prefix, _, ms = key.rpartition("_")
        if prefix in PACED_TARGETS:
            path = PACED_TARGETS[prefix][0]
            name = f"time per token p50 of the most streams paced at {ms} ms <= 1.1x the fewest's, {path}"
            targets[name] = (key, "<=", 1.1)
    out: dict[str, dict[str, Any]] = {}
    for name, (key, op, bound) in targets.items():
        if key not in r["ratios"]:  # a section this run left out
            continue
        value = r["ratios"][key]
        ok: bool | None = {"<=": value <= bound, ">=": value >= bound}[op]
        out[name] = {"value": round(value, 3), "bound": bound, "pass": ok}
        prefix, _, ms = key.rpartition("_")
        if prefix not in PACED_TARGETS:
            continue
        out[name].update(paced_cpu(r, PACED_TARGETS[prefix][1], ms))
        engine = r["ratios"].get(f"engine_paced_tpot_ratio_{ms}")
        if engine is not None and engine > bound:
            out[name].update(engine=round(engine, 3), engine_bound=True)
            out[name]["pass"] = None  # not readable on this host: the engine alone misses it
    return out


def paced_cpu(r: dict[str, Any], section: str, ms: str) -> dict[str, Any]:
    """CPU a token of the most streams at this pace: over HTTP, the text replica's and the rest of the host's (the
    ingress, the edge, Ray and the client: the path outside the model's replica), beside the engine alone's in
    process. Busy CPU, so an engine's threads that spin while they wait for work count too (docs/edge-measurements.md,
    2026-12-08); empty for a run measured before the bench counted CPU."""
    paced = r.get(section, {}).get("paced_streams", {}).get(ms)
    most = str(max(int(n) for n in paced["by_streams"])) if paced else None
    measured = paced["by_streams"][most] if paced else {}
    if "text_replica_cpu_ms_per_token" not in measured:
        return {}
    replica = measured["text_replica_cpu_ms_per_token"]
    out = {
        "streams": int(most),
        "text_replica_cpu_ms": round(replica, 2),
        "rest_cpu_ms": round(measured["host_cpu_ms_per_token"] - replica, 2),
    }
    engine = r.get("engine_paced", {}).get(ms, {}).get("by_streams", {}).get(most, {})
    if "host_cpu_ms_per_token" in engine:
        out["engine_cpu_ms"] = round(engine["host_cpu_ms_per_token"], 2)
    return out


def markdown(r: dict[str, Any]) -> str:
    if "continuous" not in r:
        return "\n".join([*direct_ingress_table(r), "", *_target_lines(r)]) + "\n"
    c, s = r["continuous"], r["static"]
    rows = [
        (
            "output tokens/s at saturation (plain)",
            c["saturation"]["output_tokens_per_s"],
            s["saturation"]["output_tokens_per_s"],
            "{:.0f}",
        ),
        (
            "output tokens/s at saturation (streamed)",
            c["saturation_streamed"]["output_tokens_per_s"],
            s["saturation_streamed"]["output_tokens_per_s"],
            "{:.0f}",
        ),
        ("in-process ceiling, same workload (tokens/s)", r["ceiling"]["output_tokens_per_s"], None, "{:.0f}"),
        ("KV cache peak use at saturation", c["saturation"]["kv_cache_peak_used"], None, "{:.1%}"),
        ("peak requests in the running batch", c["saturation"]["peak_running"], None, "{:.0f}"),
        (
            "TTFT p95 at saturation (s)",
            c["saturation_streamed"]["ttft_p95_s"],
            s["saturation_streamed"]["ttft_p95_s"],
            "{:.2f}",
        ),
        (
            "ITL p50 at saturation (ms)",
            c["saturation_streamed"]["itl_p50_ms"],
            s["saturation_streamed"]["itl_p50_ms"],
            "{:.1f}",
        ),
    ]
    for fraction in c["rates"]:
        rc, rs = c["rates"][fraction], s["rates"].get(fraction, {})
        rows.append(
            (
                f"rate {float(fraction):.2f}x sat: TTFT p50 / p95 (s)",
                f"{rc['ttft_p50_s']:.2f} / {rc['ttft_p95_s']:.2f}",
                f"{rs.get('ttft_p50_s', float('nan')):.2f} / {rs.get('ttft_p95_s', float('nan')):.2f}",
                "{}",
            )
        )
        rows.append(
            (
                f"rate {float(fraction):.2f}x sat: ITL p50 (ms), tokens/s",
                f"{rc['itl_p50_ms']:.1f}, {rc['output_tokens_per_s']:.0f}",
                f"{rs.get('itl_p50_ms', float('nan')):.1f}, {rs.get('output_tokens_per_s', float('nan')):.0f}",
                "{}",
            )
        )
    rows.append(
        (
            "TTFT / whole 128-token completion (s)",
            f"{c['ttft_128']['ttft_s']:.3f} / {c['ttft_128']['whole_s']:.3f}",
            f"{s['ttft_128']['ttft_s']:.3f} / {s['ttft_128']['whole_s']:.3f}",
            "{}",
        )
    )
    hop = c["hop"]
    rows.append(
        (
            "1-token call: in-process / handle / bare handle (ms)",
            f"{hop['direct_ms']:.1f} / {hop['handle_ms']:.1f} / {hop['bare_handle_ms']:.1f}",
            None,
            "{}",
        )
    )
    for ms, paced in c["paced_streams"].items():
        rows.append(
            (
                f"ITL p50 of {' / '.join(paced['by_streams'])} streams paced at {ms} ms a token (ms)",
                " / ".join(f"{m['itl_p50_ms']:.1f}" for m in paced["by_streams"].values()),
                None,
                "{}",
            )
        )
        rows.append(
            (
                "Time per output token p50, the same streams (ms; equals ITL while each chunk holds one token)",
                " / ".join(f"{m['tpot_p50_ms']:.1f}" for m in paced["by_streams"].values()),
                None,
                "{}",
            )
        )
    rows.append(
        (
            "1-token completion over HTTP / bare HTTP round trip, GET /ping (ms)",
            f"{hop['http_ms']:.1f} / {hop['bare_http_ms']:.1f}",
            None,
            "{}",
        )
    )
    for kind in ("poisson", "concurrent"):
        gc, gs = c["guidellm"][kind], s["guidellm"][kind]
        rows.append(
            (
                f"guidellm {kind}: ok / errored requests",
                f"{gc.get('successful')} / {gc.get('errored')}",
                f"{gs.get('successful')} / {gs.get('errored')}",
                "{}",
            )
        )
        rows.append((f"guidellm {kind}: output tokens/s, TTFT p50 (ms)", _g(gc), _g(gs), "{}"))
        rows.append((f"guidellm {kind}: requests sent / offered req/s", _sent(gc), _sent(gs), "{}"))
    calls = r.get("calls", "by reference")  # how the ingress calls the text service (runs before it: by reference)
    lines = [f"| measurement (profile: {r['profile']}, text called {calls}) | continuous | static |", "|---|---|---|"]
    for label, a, b, fmt in rows:
        cells = ["-" if v is None else (fmt.format(v) if fmt != "{}" else str(v)) for v in (a, b)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines += ["", *direct_ingress_table(r), "", *_target_lines(r)]
    return "\n".join(lines) + "\n"


def _target_lines(r: dict[str, Any]) -> list[str]:
    return [f"- llm: {_verdict(t)}: {n} (measured {t['value']}{_cpu_note(t)})" for n, t in r["targets"].items()]


def _cpu_note(t: dict[str, Any]) -> str:
    """A paced target's CPU a token over HTTP: the text replica's (the engine alone's beside it) and the rest's."""
    if "rest_cpu_ms" not in t:
        return ""
    engine = f" (the engine alone {t['engine_cpu_ms']})" if "engine_cpu_ms" in t else ""
    replica, rest = t["text_replica_cpu_ms"], t["rest_cpu_ms"]
    return f"; CPU a token of {t['streams']} streams: text replica {replica} ms{engine}, the rest {rest}"


def _verdict(t: dict[str, Any]) -> str:
    """pass, MISS, or why the target could not be read on this host."""
    if t.get("engine_bound"):
        return f"not readable here (the engine alone, in process, is {t['engine']}x: it cannot keep pace)"
    return "pass" if t["pass"] else "MISS"


def direct_ingress_table(r: dict[str, Any]) -> list[str]:
    """The same engine through the edge onto Serve's proxy and onto the ingress replicas (direct ingress)."""
    lines = [
        "| path (continuous engine) | tokens/s at saturation | efficiency (rounds' spread) | "
        "1-token HTTP / GET /ping / in process (ms) | added (ms) | "
        "time per token p50 (chunks a token) by pace, by streams (ms) |",
        "|---|---|---|---|---|---|",
    ]
    paths = (("edge -> Serve's proxy", "continuous"), ("edge -> ingress replicas", "direct_ingress"))
    if "engine_paced" in r:  # the reference the paced streams are read against
        tps = r["ceiling"]["output_tokens_per_s"]
        lines.append(f"| the engine alone, in process | {tps:.0f} | - | - | - | {_per_token(r['engine_paced'])} |")
    for label, run in ((label, r[key]) for label, key in paths if key in r):
        hop, itl = run["hop"], _per_token(run["paced_streams"])
        eff = run["efficiency"]
        tps = median(eff["served"])  # the saturations the efficiency is measured on
        spread = f" ({min(eff['ratios']):.2f}-{max(eff['ratios']):.2f})" if len(eff["ratios"]) > 1 else ""
        lines.append(
            f"| {label} | {tps:.0f} | {eff['efficiency']:.2f}{spread} | "
            f"{hop['http_ms']:.1f} / {hop['bare_http_ms']:.1f} / {hop['direct_ms']:.1f} | {hop['http_added_ms']:.1f} | "
            f"{itl} |"
        )
    return lines


def _per_token(paced: dict[str, Any]) -> str:
    return "; ".join(
        f"{ms} ms: "
        + " / ".join(f"{n}: {m['tpot_p50_ms']:.1f} ({m['chunks_per_token']:.2f})" for n, m in p["by_streams"].items())
        for ms, p in paced.items()
    )


def _sent(g: dict[str, Any]) -> str:
    """What guidellm sent, against what it was asked (its poisson profile may send far more: docs/benchmarks.md)."""
    rate = g.get("offered_requests_per_s")
    return f"{g.get('requests_sent')} / {rate:.2f}" if isinstance(rate, int | float) else "-"


def _g(g: dict[str, Any]) -> str:
    if "error" in g:
        return "failed: " + g["error"].strip().splitlines()[-1][:80]
    tps, ttft = g.get("output_tokens_per_s"), g.get("ttft_p50_ms")
    return f"{tps:.0f}, {ttft:.0f}" if tps is not None and ttft is not None else "-"


def plot(r: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for engine, style in (("continuous", "o-"), ("static", "s--")):
        points = sorted(r[engine]["rates"].values(), key=lambda p: p["rate"])
        xs = [p["output_tokens_per_s"] for p in points]
        axes[0].plot(xs, [p["ttft_p95_s"] for p in points], style, label=engine)
        axes[1].plot(xs, [p["itl_p50_ms"] for p in points], style, label=engine)
    axes[0].set_title("TTFT p95 vs throughput (Poisson arrivals)")
    axes[0].set_ylabel("TTFT p95 (s)")
    axes[1].set_title("inter-token latency p50 vs throughput")
    axes[1].set_ylabel("ITL p50 (ms)")
    for ax in axes:
        ax.set_xlabel("output tokens/s")
        ax.legend()
    fig.tight_layout()
    path = out / f"llm-{r['profile']}{'-by-reference' if r.get('calls') == 'by reference' else ''}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
