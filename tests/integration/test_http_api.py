"""Every route over HTTP, on the local profile deployed with ``serve deploy`` on one local Ray instance."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import soundfile as sf
from PIL import Image

SERVICES = ("text", "image", "voice", "recommend", "embed")


def test_health_reports_every_service_with_its_placement(client: httpx.Client) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok"
    assert set(body["services"]) == {*SERVICES, "text-b"}  # text-b: the text experiment's candidate
    for name, info in body["services"].items():
        assert info["status"] == "ok", name
        assert info["device"] == "cpu"  # no GPU was advertised to this Ray instance
        assert info["gpu_ids"] == []
        assert info["replica"] and info["node_id"]
    assert body["services"]["text"]["num_cpus"] == 0.25
    assert body["services"]["text"]["torch_threads"] == 1


def test_models_lists_the_served_models_and_the_experiment(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert {(m["id"], m["service"]) for m in body["data"]} == {
        ("tiny-gpt2", "text"),
        ("tiny-gpt2-b", "text"),  # the experiment's candidate
        ("content-writer", "text"),  # the experiment's public name
        ("tiny-sd", "image"),
        ("tiny-vits", "voice"),
        ("tiny-bert", "embed"),
    }


def test_completion_is_seeded(client: httpx.Client) -> None:
    payload = {"model": "tiny-gpt2", "prompt": "Once upon a time", "max_tokens": 6, "seed": 11, "temperature": 1}
    first = client.post("/v1/completions", json=payload)
    second = client.post("/v1/completions", json=payload)
    assert first.status_code == 200
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    assert first.json()["usage"]["completion_tokens"] <= 6


def test_images_b64_png(client: httpx.Client) -> None:
    body = client.post("/v1/images/generations", json={"prompt": "a boat", "size": "64x32", "n": 2, "seed": 1}).json()
    assert body["size"] == "64x32" and body["seed"] == 1
    sizes = {Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size for d in body["data"]}
    assert sizes == {(64, 32)} and len(body["data"]) == 2


def test_speech_returns_wav_with_headers(client: httpx.Client) -> None:
    response = client.post("/v1/audio/speech", json={"input": "Hello there. Goodbye now.", "voice": "echo"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(response.content))
    assert rate == int(response.headers["x-audio-sample-rate"]) == 16000
    assert len(data) / rate == pytest.approx(float(response.headers["x-audio-duration-s"]), abs=1e-3)


def test_recommendations_for_known_and_unknown_users(client: httpx.Client) -> None:
    known = client.get("/v1/recommendations", params={"user_id": "user-1", "k": 5}).json()["items"]
    # Personal: from the user's history (`als`), and from content like what the user read (`content`, once other
    # tests have made content the user met): never the cold-start lists.
    reasons = {i["reason"] for i in known}
    assert len(known) == 5 and "als" in reasons and reasons <= {"als", "content"}
    unknown = client.get("/v1/recommendations", params={"user_id": "visitor-42", "k": 3}).json()["items"]
    assert len(unknown) == 3 and {i["reason"] for i in unknown} <= {"popular", "fresh"}  # fresh: new content
    for item in known + unknown:
        assert set(item) == {"item_id", "score", "reason", "title"}  # title: null for items registered without one


def test_interactions_change_what_a_new_user_sees(client: httpx.Client) -> None:
    before = client.get("/v1/recommendations", params={"user_id": "fresh-user", "k": 3}).json()["items"]
    assert {i["reason"] for i in before} <= {"popular", "fresh"}
    for item in ("item-3", "item-7", "item-11"):
        response = client.post("/v1/interactions", json={"user_id": "fresh-user", "item_id": item, "event": "like"})
        assert response.status_code == 202
    after = client.get("/v1/recommendations", params={"user_id": "fresh-user", "k": 3}).json()["items"]
    # Personal now: from the factors, or new content in its reserved places (which can rank anywhere).
    reasons = {i["reason"] for i in after}
    assert "als" in reasons and reasons <= {"als", "content"}
    assert not {"item-3", "item-7", "item-11"} & {i["item_id"] for i in after}


def test_batch_interactions(client: httpx.Client) -> None:
    events = [{"user_id": "batcher", "item_id": f"item-{i}", "event": "view"} for i in range(5)]
    response = client.post("/v1/interactions/batch", json={"events": events})
    assert response.status_code == 202 and response.json() == {"accepted": 5}


def test_similar_items(client: httpx.Client) -> None:
    items = client.get("/v1/items/item-4/similar", params={"k": 4}).json()["items"]
    assert len(items) == 4
    assert "item-4" not in {i["item_id"] for i in items}
    assert {i["reason"] for i in items} == {"similar"}


BAD_REQUESTS = [
    ("post", "/v1/completions", {"prompt": "", "max_tokens": 5}, "prompt"),
    ("post", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("post", "/v1/completions", {"prompt": "hi", "max_tokens": 10**6}, "max_tokens"),
    ("post", "/v1/completions", {"prompt": "hi", "max_tokens": 201}, "max_tokens"),  # over the config limit
    ("post", "/v1/completions", {"prompt": 42}, "prompt"),
    ("post", "/v1/completions", {"prompt": "hi", "model": "gpt-4"}, "model"),
    ("post", "/v1/chat/completions", {"messages": []}, "messages"),
    (
        "post",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 9},
        "temperature",
    ),
    ("post", "/v1/images/generations", {"prompt": "x", "size": "65x64"}, "size"),
    ("post", "/v1/images/generations", {"prompt": "x", "steps": 0}, "steps"),
    ("post", "/v1/images/generations", {"prompt": "x", "size": "1024x1024"}, "width"),  # over max_width
    ("post", "/v1/images/generations", {"prompt": "x", "n": 9}, "n"),
    ("post", "/v1/audio/speech", {"input": "", "voice": "ana"}, "input"),
    ("post", "/v1/audio/speech", {"input": "x" * 4097, "voice": "ana"}, "input"),
    ("post", "/v1/audio/speech", {"input": "hello", "voice": "nobody"}, "voice"),
    ("post", "/v1/interactions", {"user_id": "u", "item_id": "item-1", "event": "poke"}, "event"),
    ("post", "/v1/interactions", {"user_id": "u", "item_id": "no-such-item", "event": "like"}, "item_id"),
    ("get", "/v1/recommendations?user_id=u&k=0", None, "k"),
    ("get", "/v1/recommendations?user_id=u&k=1000", None, "k"),
    ("get", "/v1/recommendations", None, "user_id"),
    ("get", "/v1/items/no-such-item/similar", None, "item_id"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"), BAD_REQUESTS, ids=[f"{p}:{f}" for _, p, _, f in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_naming_the_field(client: httpx.Client, method, path, body, field) -> None:
    response = client.request(method.upper(), path, json=body)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == field, error
    assert field in error["message"]


def test_malformed_json_is_a_422(client: httpx.Client) -> None:
    response = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "body"
