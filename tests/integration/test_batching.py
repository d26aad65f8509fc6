"""Dynamic batching in the running app: concurrent requests share model calls, streams included, and the
batch size changes in place with `serve deploy`."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import httpx

from tests.integration.test_observability import scrape, series

PROMPTS = [f"Story number {n} begins" for n in range(8)]


def batches_so_far(service: str) -> float:
    """How many dynamic batches the service ran so far (the histogram's count is exact; its sum is not)."""
    tag = f'service="{service}"'
    return sum(v for key, v in series(scrape(), "ray_content_studio_batch_size_count") if tag in key)


def burst(base_url: str, stream: bool = False) -> list[str]:
    async def one(client: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": "tiny-gpt2", "prompt": prompt, "max_tokens": 12, "temperature": 0, "stream": stream}
        if not stream:
            response = await client.post("/v1/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["text"]
        text = ""
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        return text

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            return list(await asyncio.gather(*(one(client, p) for p in PROMPTS)))

    return asyncio.run(run())


def batches_for_a_burst(base_url: str, stream: bool = False) -> tuple[float, list[str]]:
    """Send len(PROMPTS) concurrent requests; return how many batches served them, and their texts."""
    before = batches_so_far("text")
    texts = burst(base_url, stream)
    time.sleep(1)
    deadline = time.monotonic() + 60
    after = before
    while time.monotonic() < deadline:  # metrics reach the endpoint every few seconds; wait until they settle
        now = batches_so_far("text")
        if now > before and now == after:
            break
        after = now
        time.sleep(4)
    return after - before, texts


def set_text_batching(deployed_app: dict, redeploy, client: httpx.Client, **batching) -> None:
    before = client.get("/v1/health").json()["services"]["text"]
    config = copy.deepcopy(deployed_app["config"])
    text = next(d for d in config["applications"][0]["deployments"] if d["name"] == "text")
    text["user_config"]["batching"] = batching
    redeploy(config)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = client.get("/v1/health").json()["services"]["text"]
        if now["config_version"] != before["config_version"]:
            break
        time.sleep(1)
    assert now["config_version"] != before["config_version"]
    assert (now["loaded_at"], now["reloads"]) == (before["loaded_at"], before["reloads"])  # in place: no reload


def test_concurrent_requests_share_batches(base_url: str) -> None:
    batches, texts = batches_for_a_burst(base_url)
    assert 1 <= batches < len(PROMPTS)
    assert len(texts) == len(PROMPTS) and all(texts)


def test_streams_are_batched_and_spell_what_completions_answer(
    base_url: str, deployed_app: dict, redeploy, client: httpx.Client
) -> None:
    # Streams reach the replica less bunched than plain requests (each opens its SSE response first): a wider
    # wait window, changed in place, lets them meet.
    set_text_batching(deployed_app, redeploy, client, max_batch_size=8, batch_wait_timeout_s=0.25)
    _, texts = batches_for_a_burst(base_url)
    stream_batches, streamed = batches_for_a_burst(base_url, stream=True)
    assert stream_batches < len(PROMPTS)
    assert streamed == texts  # greedy: a batched stream spells what a batched completion answered


def test_batch_size_changes_in_place(base_url: str, deployed_app: dict, redeploy, client: httpx.Client) -> None:
    set_text_batching(deployed_app, redeploy, client, max_batch_size=1, batch_wait_timeout_s=0.0)
    batches, _ = batches_for_a_burst(base_url)
    assert batches == len(PROMPTS)
