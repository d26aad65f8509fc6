"""Per-model GPU allocation, autoscaling and in-place updates, with Ray's own scheduler on the session cluster.

The session cluster has a CPU-only head and two worker nodes advertising two GPUs each, so Ray hands out GPU ids
and ``CUDA_VISIBLE_DEVICES`` as on a real cluster; without CUDA the models fall back to the CPU.
"""

from __future__ import annotations

import asyncio
import copy
import math
import time
from pathlib import Path

import httpx

from app.deploy import ROOT, app_of, deployments_of, load, only, tiny_variant
from tests.integration.conftest import extra_app, with_app
from tests.integration.serve_state import replica_reports, running_replicas

MODELS = ("text", "image", "voice", "recommend")


def replicas_of(app: str, deployment: str, expected: int) -> dict[str, dict]:
    """Every replica's own report (``describe``); there must be ``expected`` replicas."""
    seen = replica_reports(app, deployment)
    assert len(seen) == expected, f"{app}/{deployment}: {len(seen)} replicas, {expected} expected"
    return seen


def test_cluster_profile_puts_every_model_replica_on_its_gpus(
    client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    # The four model services with the cluster profile's placement; the pipeline places nothing on GPUs.
    cluster_app = only(tiny_variant(load(ROOT / "configs" / "cluster.yaml"), name="gpu", route_prefix="/gpu"), MODELS)
    redeploy(with_app(deployed_app, cluster_app), app="gpu", healthy=(*MODELS, "ingress"))
    wanted = deployments_of(cluster_app)
    workers = set(deployed_app["worker_node_ids"])
    whole_gpus: dict[str, set[str]] = {}  # node -> GPU ids held by whole-GPU replicas
    for name in ("text", "image", "voice", "recommend"):
        options, scaling = wanted[name]["ray_actor_options"], wanted[name]["autoscaling_config"]
        gpus = options.get("num_gpus", 0)
        replicas = replicas_of("gpu", name, scaling["min_replicas"])
        for info in replicas.values():
            assert info["device"] == "cpu"  # the GPUs are advertised, not real: the model falls back to CPU
            assert len(info["gpu_ids"]) == math.ceil(gpus), (name, info)
            if gpus:
                assert info["node_id"] in workers  # the head has no GPUs
                assert info["cuda_visible_devices"] == ",".join(info["gpu_ids"])
            if gpus >= 1:
                held = whole_gpus.setdefault(info["node_id"], set())
                assert not held & set(info["gpu_ids"]), f"{name} shares a whole GPU on {info['node_id']}"
                held.update(info["gpu_ids"])
        if wanted[name].get("max_replicas_per_node") == 1:
            nodes = [info["node_id"] for info in replicas.values()]
            assert len(nodes) == len(set(nodes)), f"{name} replicas share a node: {nodes}"
    text_nodes = {info["node_id"] for info in replicas_of("gpu", "text", 2).values()}
    assert text_nodes == workers  # two text replicas, one per GPU node
    # What users see: /v1/health reports each service's GPU ids and device (whole GPUs and a fractional share).
    services = client.get("/gpu/v1/health").json()["services"]
    for name in MODELS:
        gpus = wanted[name]["ray_actor_options"].get("num_gpus", 0)
        assert len(services[name]["gpu_ids"]) == math.ceil(gpus) and services[name]["device"] == "cpu", name


def autoscaling_app(deployed_app: dict) -> dict:
    """Text and recommend (a service beside it that must not move) with a fast autoscaling policy on `text` and
    slow text requests (2 s each)."""
    app = extra_app(deployed_app["config"], "scaling", services=("text", "recommend"))
    text = deployments_of(app)["text"]
    text["max_ongoing_requests"] = 2
    text["autoscaling_config"] = {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 1,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 4,
    }
    # The model's latency, without burning this machine's two cores: each request waits 2 s before generating.
    text["user_config"] = {**text["user_config"], "faults": {"delay_s": 2.0}}
    return app


async def _load(url: str, seconds: float, concurrency: int, until: asyncio.Event | None = None) -> list[int]:
    """Requests from ``concurrency`` clients for ``seconds`` (or until ``until`` is set); their statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds

    async def worker(session: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline and not (until and until.is_set()):
            response = await session.post(url, json={"prompt": "load", "max_tokens": 2})
            statuses.append(response.status_code)

    async with httpx.AsyncClient(timeout=120) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


def test_autoscaling_scales_the_loaded_deployment_only(deployed_app: dict, redeploy) -> None:
    app = autoscaling_app(deployed_app)
    redeploy(with_app(deployed_app, app), app="scaling", healthy=("text", "recommend", "ingress"))
    assert running_replicas("scaling")["text"] == 1
    before = running_replicas("scaling")

    peak = {"text": 1}

    async def load_and_watch() -> list[int]:
        # Load until a second text replica runs (starting one takes from seconds to a minute, by how busy the
        # machine is), then a little longer so that any other deployment Serve wrongly scaled would show.
        scaled = asyncio.Event()
        url = f"{deployed_app['url']}/scaling/v1/completions"
        load = asyncio.create_task(_load(url, 120, concurrency=8, until=scaled))
        scaled_at = None
        while not load.done():
            counts = running_replicas("scaling")
            for name, count in counts.items():
                peak[name] = max(peak.get(name, 0), count)
            if peak["text"] >= 2 and scaled_at is None:
                scaled_at = time.monotonic()
            if scaled_at is not None and time.monotonic() - scaled_at > 5:
                scaled.set()
            await asyncio.sleep(0.5)
        return await load

    statuses = asyncio.run(load_and_watch())
    assert statuses and set(statuses) == {200}
    assert peak["text"] >= 2, peak
    for name in ("recommend", "ingress"):
        assert peak[name] == before[name], f"{name} was scaled by text's load: {peak}"

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and running_replicas("scaling")["text"] > 1:
        time.sleep(1)
    assert running_replicas("scaling")["text"] == 1  # back down once the load is gone


def test_a_model_update_under_load_loses_no_request(
    client: httpx.Client, deployed_app: dict, redeploy, project_root: Path
) -> None:
    # "The next model version": the same architecture and tokenizer, other weights. Set-up already built one (the
    # A/B candidate, the same training stopped halfway); training another here would cost the suite minutes.
    version2 = project_root / ".cache" / "models" / "tiny" / "text-b"
    before = client.get("/v1/health").json()["services"]
    # The prompt's own log probabilities (echo, no new tokens) tell the weights apart even where both versions
    # would write the same words. The model is named: a request naming none is split by the A/B experiment, and
    # its candidate (text-b) already serves version 2's weights.
    prompt = {
        "model": "tiny-gpt2",
        "prompt": "Once upon a time",
        "max_tokens": 1,
        "temperature": 0,
        "echo": True,
        "logprobs": 1,
    }

    def scored() -> list[float]:
        logprobs = client.post("/v1/completions", json=prompt).json()["choices"][0]["logprobs"]["token_logprobs"]
        return [round(lp, 4) for lp in logprobs[1:]]

    old_scores = scored()

    updated = copy.deepcopy(deployed_app["config"])
    text = deployments_of(app_of(updated))["text"]
    text["user_config"] = {**text["user_config"], "model": str(version2)}

    async def load_during_update() -> list[int]:
        load = asyncio.create_task(_load(f"{deployed_app['url']}/v1/completions", 20, concurrency=4))
        await asyncio.sleep(2)
        await asyncio.to_thread(redeploy, updated)
        return await load

    statuses = asyncio.run(load_during_update())
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

    after = client.get("/v1/health").json()["services"]
    assert after["text"]["source"] == str(version2)
    assert after["text"]["replica"] == before["text"]["replica"]  # swapped in place, not restarted
    assert after["text"]["reloads"] == before["text"]["reloads"] + 1
    assert scored() != old_scores  # the new weights answer
    for name in ("image", "voice", "recommend"):
        assert after[name]["replica"] == before[name]["replica"], name
        assert after[name]["loaded_at"] == before[name]["loaded_at"], name
