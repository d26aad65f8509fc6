"""Continuous batching in the running app: requests join and leave the text engine's batch token by token, and
the KV cache is resized in place with `serve deploy` (the engine restarts on the loaded weights)."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import httpx


def engine_state(client: httpx.Client) -> dict:
    return client.get("/v1/health").json()["services"]["text"]


async def _timed_completion(client: httpx.AsyncClient, body: dict, started: float) -> tuple[float, dict]:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started, response.json()


def test_a_short_request_started_mid_way_returns_before_a_long_one(base_url: str, client: httpx.Client) -> None:
    long_body = {"model": "tiny-gpt2", "prompt": "A long story", "max_tokens": 200, "min_tokens": 200, "temperature": 0}
    short_body = {"model": "tiny-gpt2", "prompt": "Hi", "max_tokens": 4, "min_tokens": 4, "temperature": 0}

    async def scenario() -> tuple[float, float, int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            started = time.perf_counter()
            long = asyncio.ensure_future(_timed_completion(http, long_body, started))
            deadline = time.monotonic() + 30
            while engine_state(client)["running"] == 0 and time.monotonic() < deadline:  # it is generating
                await asyncio.sleep(0.02)
            short_done, short = await _timed_completion(http, short_body, started)
            long_done, long_result = await long
            assert long_result["usage"]["completion_tokens"] == 200
            return short_done, long_done, short["usage"]["completion_tokens"]

    short_done, long_done, short_tokens = asyncio.run(scenario())
    assert short_tokens == 4
    assert short_done < long_done  # not held hostage by the long one


def test_concurrent_requests_share_steps_and_streams_spell_the_same_text(base_url: str, client: httpx.Client) -> None:
    prompts = [f"Story number {n} begins" for n in range(8)]

    async def burst(stream: bool) -> list[str]:
        async def one(http: httpx.AsyncClient, prompt: str) -> str:
            body = {"model": "tiny-gpt2", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": stream}
            if not stream:
                response = await http.post("/v1/completions", json=body)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["text"]
            text = ""
            async with http.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text += json.loads(line[6:])["choices"][0]["text"]
            return text

        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            return list(await asyncio.gather(*(one(http, p) for p in prompts)))

    before = engine_state(client)["steps"]
    texts = asyncio.run(burst(False))
    steps = engine_state(client)["steps"] - before
    assert all(texts) and steps < 8 * 16  # 128 tokens in fewer steps: requests shared the batch
    assert asyncio.run(burst(True)) == texts  # greedy: the streams spell what the completions answered


def test_the_kv_cache_is_resized_in_place(deployed_app: dict, redeploy, client: httpx.Client) -> None:
    before = engine_state(client)
    config = copy.deepcopy(deployed_app["config"])
    text = next(d for d in config["applications"][0]["deployments"] if d["name"] == "text")
    text["user_config"]["engine"]["kv_cache"] = {"page_size": 16, "num_blocks": 96, "max_batch_tokens": 64}
    redeploy(config)
    deadline = time.monotonic() + 90
    now = before
    while time.monotonic() < deadline:
        now = engine_state(client)
        if now.get("config_version") != before["config_version"]:
            break
        time.sleep(1)
    assert now["kv_cache"]["capacity_tokens"] == 16 * 96 and now["kv_cache"]["page_size"] == 16
    assert (now["loaded_at"], now["reloads"], now["replica"]) == (
        before["loaded_at"],
        before["reloads"],
        before["replica"],
    )
    response = client.post("/v1/completions", json={"model": "tiny-gpt2", "prompt": "Still here", "max_tokens": 8})
    assert response.status_code == 200
