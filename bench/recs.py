"""The recommender at catalogue scale (one module past 400 lines: one sweep, its steps and its report): a seeded
synthetic catalogue swept over sizes (10k, 100k, 1M items, users
and events in proportion). For each size a trainer process registers every item (vectorised on arrival), records
the events and retrains (the training-time build of the item space and its ANN indexes, published as a version);
then a fresh serving process (a replica, with its own memory) loads that version and measures:

- registering one new item (vectorise + store), p50/p95; and its first appearance in the live space;
- recommendations and similar items (p50/p95) through the service class the deployment wraps;
- ANN recall@10 of both against exact scoring of every item;
- the replica's resident memory after loading, and the retraining time;
- then the same version behind the Ray Serve deployment (one replica on a local Ray): recommendations and similar
  items as a caller of the deployment sees them, and the replica actor's memory;
- last, the whole local application serving that catalogue: content requests through HTTP, counting contents whose
  recommendations stage failed or timed out (``partial``) and that stage's time.

    python -m bench.recs --sizes 10000 100000 1000000 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"register_p95_ms": 10.0, "recommend_p95_ms": 50.0, "similar_p95_ms": 20.0, "ann_recall": 0.95, "rss_gb": 4.0}
COMMUNITIES = 50


def config(folder: Path) -> Any:
    from deployments.recommend import RecommendConfig

    return RecommendConfig(
        model=None,
        store_url=f"sqlite:///{folder}/store.db",
        trained_dir=str(folder / "versions"),
        retrieval="approximate",
        training={"factors": 32, "iterations": 8, "after_events": None},
        max_k=100,
    )


def prepare(size: int, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Register ``size`` items and ~2 events per item, then retrain (timed)."""
    from deployments.recommend import ItemIn, Recommender
    from offline.interactions import TOPICS

    rng = np.random.default_rng(seed)
    service = Recommender(config(folder))
    words = [topic for topic in TOPICS]
    started = time.perf_counter()
    for start in range(0, size, 5000):
        chunk = range(start, min(size, start + 5000))
        items = []
        for i in chunk:
            topic = words[(i % COMMUNITIES) % len(words)]
            text = " ".join(rng.choice(topic, 25)) + f" community{i % COMMUNITIES}"
            items.append(ItemIn(item_id=f"item-{i}", title=f"Item {i}", text=text))
        service.add_items(items)
    registered_s = time.perf_counter() - started
    users = max(100, size // 10)
    events = []
    now = time.time()
    for _ in range(2 * size):
        user = int(rng.integers(users))
        community = user % COMMUNITIES
        item = int(rng.integers(size // COMMUNITIES)) * COMMUNITIES + community
        events.append(
            {
                "user_id": f"user-{user}",
                "item_id": f"item-{min(item, size - 1)}",
                "event": "view",
                "weight": 1.0,
                "created_at": now,
            }
        )
    for start in range(0, len(events), 50_000):
        service.store.add(events[start : start + 50_000])
    started = time.perf_counter()
    report = service.retrain()
    return {
        "items": size,
        "users": users,
        "events": len(events),
        "register_all_s": round(registered_s, 2),
        "retrain_s": round(time.perf_counter() - started, 2),
        "version": report.version if report else None,
    }


def serve(size: int, folder: Path, queries: int = 200, seed: int = 1) -> dict[str, Any]:
    """A fresh replica: load the version, then measure latencies, recall and memory."""
    import psutil

    from deployments.recommend import ItemIn, Recommender, RecommendRequest, SimilarRequest

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    replica = Recommender(config(folder))
    space = replica.space()
    load_s = time.perf_counter() - started
    rss_gb = psutil.Process().memory_info().rss / 2**30

    def timed(fn: Any, args: list[Any]) -> tuple[list[float], list[Any]]:
        out, ms = [], []
        for arg in args:
            t = time.perf_counter()
            out.append(fn(arg))
            ms.append((time.perf_counter() - t) * 1000)
        return ms, out

    users = [RecommendRequest(user_id=f"user-{int(u)}", k=10) for u in rng.integers(max(100, size // 10), size=queries)]
    items = [SimilarRequest(item_id=f"item-{int(i)}", k=10) for i in rng.integers(size, size=queries)]
    replica.recommend(users[0])  # warm
    rec_ms, rec_ann = timed(replica.recommend, users)
    sim_ms, sim_ann = timed(replica.similar, items)
    run = f"{int(time.time())}"  # new ids on every run over the same folder: each one a real insert
    new = [
        [ItemIn(item_id=f"new-{run}-{n}", title="New", text="a new story about harbours and tides")]
        for n in range(queries)
    ]
    reg_ms, _ = timed(replica.add_items, new)
    replica._followed = (0.0, -1.0)
    t = time.perf_counter()
    space = replica.space()  # the new items join the live space and indexes
    follow_ms = (time.perf_counter() - t) * 1000
    assert all(f"new-{run}-{n}" in space.index for n in range(queries))
    replica._approximate = lambda _space: False  # exact scoring of every item, for recall
    rec_exact = [replica.recommend(r) for r in users]
    sim_exact = [replica.similar(r) for r in items]

    def recall(ann: list[Any], exact: list[Any]) -> float:
        hits = [
            len({i.item_id for i in a.items} & {i.item_id for i in e.items}) / max(1, len(e.items))
            for a, e in zip(ann, exact, strict=True)
        ]
        return float(np.mean(hits))

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    return {
        "load_s": round(load_s, 2),
        "rss_gb": round(rss_gb, 3),
        "register_p50_ms": p(reg_ms, 50),
        "register_p95_ms": p(reg_ms, 95),
        "follow_new_items_ms": round(follow_ms, 1),
        "recommend_p50_ms": p(rec_ms, 50),
        "recommend_p95_ms": p(rec_ms, 95),
        "similar_p50_ms": p(sim_ms, 50),
        "similar_p95_ms": p(sim_ms, 95),
        "recommend_recall@10": recall(rec_ann, rec_exact),
        "similar_recall@10": recall(sim_ann, sim_exact),
    }


def through_deployment(size: int, folder: Path, queries: int = 200, seed: int = 2) -> dict[str, Any]:
    """The same version served by the Ray Serve deployment (one replica on a local Ray): latencies as a caller
    of the deployment sees them (handle, scheduling, serialisation, the replica's thread hop), and the replica
    actor's resident memory."""
    import asyncio

    import psutil
    from ray import serve
    from ray.util.state import list_actors

    from bench.harness import local_ray
    from deployments.recommend import RecommendRequest, SimilarRequest
    from deployments.recommend.deployment import RecommendDeployment

    with local_ray(num_cpus=2):  # the dashboard: the state API finds the replica's process
        user_config = config(folder).model_dump(mode="json")
        app = RecommendDeployment.options(user_config=user_config, health_check_timeout_s=600).bind()
        handle = serve.run(app, name="recs", route_prefix=None, blocking=False)
        rng = np.random.default_rng(seed)
        users = [f"user-{int(u)}" for u in rng.integers(max(100, size // 10), size=queries)]
        items = [f"item-{int(i)}" for i in rng.integers(size, size=queries)]

        async def timed(method: str, requests: list[Any]) -> list[float]:
            await getattr(handle, method).remote(requests[0])  # warm
            ms = []
            for request in requests:
                started = time.perf_counter()
                await getattr(handle, method).remote(request)
                ms.append((time.perf_counter() - started) * 1000)
            return ms

        async def measure() -> tuple[list[float], list[float]]:
            rec = await timed("recommend", [RecommendRequest(user_id=u, k=10) for u in users])
            sim = await timed("similar", [SimilarRequest(item_id=i, k=10) for i in items])
            return rec, sim

        rec_ms, sim_ms = asyncio.run(measure())
        replicas = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "recommend" in a.class_name]
        rss = sum(psutil.Process(a.pid).memory_info().rss for a in replicas) / 2**30
        return {
            "deployment_recommend_p50_ms": float(np.percentile(rec_ms, 50)),
            "deployment_recommend_p95_ms": float(np.percentile(rec_ms, 95)),
            "deployment_similar_p50_ms": float(np.percentile(sim_ms, 50)),
            "deployment_similar_p95_ms": float(np.percentile(sim_ms, 95)),
            "deployment_rss_gb": round(rss, 3),
        }


def through_pipeline(size: int, folder: Path, contents: int = 12) -> dict[str, Any]:
    """The whole local application (tiny text, image and voice models) with its recommender serving this
    catalogue: content requests through HTTP, each one writing, illustrating, voicing, storing and recommending.
    A content whose recommendations stage failed or timed out comes back ``partial``; the stage's own time is
    in its ``timings_ms`` (registering the new item into this catalogue: ``register``)."""
    import httpx
    import yaml

    from app.deploy import app_of, deployments_of, free_port, session_config, wait_healthy
    from bench.harness import deploy, local_ray

    root = folder / "app"
    root.mkdir(exist_ok=True)
    if not (root / ".cache").exists():
        (root / ".cache").symlink_to(ROOT / ".cache")  # the tiny models; the app's own data stays in the folder
    app_config = session_config(yaml.safe_load((ROOT / "configs" / "local.yaml").read_text()), root, free_port())
    recommend = deployments_of(app_of(app_config))["recommend"]
    recommend["user_config"] = config(folder).model_dump(mode="json")
    recommend["health_check_timeout_s"] = 600
    url = f"http://127.0.0.1:{app_config['http_options']['port']}"
    with local_ray() as dashboard:
        deploy(app_config, dashboard, root, "app")
        wait_healthy(url, timeout=900)
        rng = np.random.default_rng(3)
        users = [f"user-{int(u)}" for u in rng.integers(max(100, size // 10), size=contents)]
        records, seconds = [], []
        with httpx.Client(base_url=url, timeout=120) as client:
            for n, user in enumerate(users):
                started = time.perf_counter()
                response = client.post("/v1/content", json={"topic": f"harbours and tides, part {n}", "user_id": user})
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
                records.append(response.json())
        stage = [r["timings_ms"].get("recommendations", float("nan")) for r in records]
        return {
            "pipeline_contents": len(records),
            "pipeline_partial": sum(r["status"] != "complete" for r in records),
            "pipeline_recommendation_errors": sum("recommendations" in (r.get("errors") or {}) for r in records),
            "pipeline_with_recommendations": sum(bool(r["recommendations"]) for r in records),
            "pipeline_recommendations_stage_p50_ms": float(np.nanpercentile(stage, 50)),
            "pipeline_recommendations_stage_p95_ms": float(np.nanpercentile(stage, 95)),
            "pipeline_recommendations_stage_ms": [round(ms, 1) for ms in stage],
            "pipeline_p50_s": float(np.percentile(seconds, 50)),
        }


def run_size(size: int, keep: Path | None = None) -> dict[str, Any]:
    """Every step in its own process. ``keep``: prepare each size once into ``keep/<size>`` and reuse it on the
    next run (a million items take minutes to register and retrain; serving steps can then be rerun alone)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    with contextlib.ExitStack() as stack:
        if keep is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"recs-{size}-")))
        else:
            folder = keep / str(size)
            folder.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {}
        prepared = folder / "prepare.json"
        if prepared.exists():
            out.update(json.loads(prepared.read_text()))
        for step in ("prepare", "serve", "deployment", "pipeline"):
            if step == "prepare" and prepared.exists():
                continue
            done = subprocess.run(
                [sys.executable, "-m", "bench.recs", "--step", step, "--size", str(size), "--dir", str(folder)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{step} {size}: {done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if step == "prepare" and keep is not None:
                prepared.write_text(json.dumps(result))
            out.update(result)
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency and memory targets on what a caller of the deployment sees (the in-process figures when a row
    has no deployment step)."""
    largest = max(rows, key=lambda r: r["items"])
    for key in ("recommend_p95_ms", "similar_p95_ms", "rss_gb"):
        if f"deployment_{key}" in largest:
            largest = {**largest, key: largest[f"deployment_{key}"]}
    return {
        "register_p95_ms (every size)": {
            "value": max(r["register_p95_ms"] for r in rows),
            "target": TARGETS["register_p95_ms"],
            "met": all(r["register_p95_ms"] <= TARGETS["register_p95_ms"] for r in rows),
        },
        f"recommend_p95_ms at {largest['items']}": {
            "value": largest["recommend_p95_ms"],
            "target": TARGETS["recommend_p95_ms"],
            "met": largest["recommend_p95_ms"] <= TARGETS["recommend_p95_ms"],
        },
        f"similar_p95_ms at {largest['items']}": {
            "value": largest["similar_p95_ms"],
            "target": TARGETS["similar_p95_ms"],
            "met": largest["similar_p95_ms"] <= TARGETS["similar_p95_ms"],
        },
        "ANN recall@10 (lowest)": {
            "value": min(min(r["recommend_recall@10"], r["similar_recall@10"]) for r in rows),
            "target": TARGETS["ann_recall"],
            "met": all(min(r["recommend_recall@10"], r["similar_recall@10"]) >= TARGETS["ann_recall"] for r in rows),
        },
        f"content pipeline recommendation failures at {largest['items']}": {
            "value": largest.get("pipeline_recommendation_errors", float("nan")),
            "target": 0,
            "met": largest.get("pipeline_recommendation_errors") == 0
            and largest.get("pipeline_with_recommendations") == largest.get("pipeline_contents"),
        },
        f"replica RSS GB at {largest['items']}": {
            "value": largest["rss_gb"],
            "target": TARGETS["rss_gb"],
            "met": largest["rss_gb"] < TARGETS["rss_gb"],
        },
    }


def markdown(rows: list[dict[str, Any]], met: dict[str, Any]) -> str:
    cols = [
        "items",
        "register_p95_ms",
        "recommend_p50_ms",
        "recommend_p95_ms",
        "similar_p95_ms",
        "recommend_recall@10",
        "similar_recall@10",
        "rss_gb",
        "load_s",
        "retrain_s",
        "deployment_recommend_p50_ms",
        "deployment_recommend_p95_ms",
        "deployment_similar_p95_ms",
        "deployment_rss_gb",
        "pipeline_partial",
        "pipeline_recommendations_stage_p95_ms",
    ]
    cols = [c for c in cols if all(c in r for r in rows)]
    lines = ["## The recommender at catalogue scale", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [
        f"| {name} (target {t['target']}) | {t['value']:.3g} | {'yes' if t['met'] else 'no'} |"
        for name, t in met.items()
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["items"] for r in rows]
    fig, (left, right, recall) = plt.subplots(1, 3, figsize=(15, 4))
    for key, label in (
        ("register_p95_ms", "register p95"),
        ("recommend_p95_ms", "recommend p95 (in process)"),
        ("similar_p95_ms", "similar p95 (in process)"),
        ("deployment_recommend_p95_ms", "recommend p95 (deployment)"),
        ("deployment_similar_p95_ms", "similar p95 (deployment)"),
    ):
        if all(key in r for r in rows):
            left.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="items", ylabel="ms", title="latency vs catalogue")
    left.legend()
    rss = "deployment_rss_gb" if all("deployment_rss_gb" in r for r in rows) else "rss_gb"
    right.plot(sizes, [r[rss] for r in rows], marker="o", label="replica RSS (GB)")
    right.plot(sizes, [r["retrain_s"] / 60 for r in rows], marker="o", label="retrain (min)")
    right.set(xscale="log", xlabel="items", title="memory and retraining")
    right.legend()
    for key, label in (("recommend_recall@10", "recommendations"), ("similar_recall@10", "similar items")):
        recall.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    recall.axhline(TARGETS["ann_recall"], color="grey", linestyle="--", label="target")
    recall.set(xscale="log", xlabel="items", ylabel="recall@10", title="ANN recall@10 against exact")
    recall.legend()
    fig.tight_layout()
    path = out / "recs-scale.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", type=Path, help="prepare each size once into KEEP/<size> and reuse it")
    parser.add_argument("--step", choices=["prepare", "serve", "deployment", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "prepare":
        print(json.dumps(prepare(args.size, args.dir)))
        return
    if args.step == "serve":
        print(json.dumps(serve(args.size, args.dir)))
        return
    if args.step == "deployment":
        print(json.dumps(through_deployment(args.size, args.dir)))
        return
    if args.step == "pipeline":
        print(json.dumps(through_pipeline(args.size, args.dir)))
        return
    rows = []
    for size in args.sizes:
        print(f"recs: {size} items ...", flush=True)
        rows.append(run_size(size, args.keep))
        print(json.dumps(rows[-1]), flush=True)
    met = targets(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recs.json").write_text(json.dumps({"rows": rows, "targets": met}, indent=2))
    (args.out / "recs.md").write_text(markdown(rows, met))
    plot(rows, args.out)
    print(markdown(rows, met))


if __name__ == "__main__":
    main()
