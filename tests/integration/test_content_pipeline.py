"""The content pipeline over HTTP on the tiny profile: complete records, streaming, degradation, persistence."""

from __future__ import annotations

import base64
import copy
import io
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import soundfile as sf
from PIL import Image

from tests.integration.conftest import extra_app, slow_writing
from tests.integration.serve_state import replica_reports, wait_rolled_out

APP = "content-studio"


def iter_sse(response: httpx.Response) -> Iterator[tuple[str, dict]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    return list(iter_sse(response))


@pytest.fixture(scope="module")
def created(client: httpx.Client) -> dict:
    response = client.post("/v1/content", json={"topic": "a short story about lighthouses", "user_id": "user-3"})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_complete_record_with_png_and_wav(client: httpx.Client, created: dict) -> None:
    assert created["status"] == "complete" and created["errors"] == {}
    assert created["article"]["title"] and created["article"]["body"]
    assert len(created["recommendations"]) == 5
    image = client.get(created["image_url"])
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)
    audio = client.get(created["audio_url"])
    assert audio.headers["content-type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 16000 and len(data) > 0


def test_the_record_is_listed_and_readable(client: httpx.Client, created: dict) -> None:
    assert client.get(f"/v1/content/{created['id']}").json() == created
    page = client.get("/v1/content", params={"limit": 100}).json()
    assert created["id"] in {item["id"] for item in page["items"]}
    assert page["total"] >= 1 and page["limit"] == 100


def test_stored_content_is_an_item_users_can_like(client: httpx.Client, created: dict) -> None:
    response = client.post("/v1/interactions", json={"user_id": "fan", "item_id": created["id"], "event": "like"})
    assert response.status_code == 202
    fresh = client.get("/v1/recommendations", params={"user_id": "brand-new-visitor", "k": 10}).json()["items"]
    assert created["id"] in {item["item_id"] for item in fresh}


def test_streamed_content_sends_its_audio_as_it_is_made_and_stores_the_same(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/content", json={"topic": "tides", "stream": True, "seed": 4}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "complete"
    assert names.count("token") >= 2
    last_token = max(i for i, name in enumerate(names) if name == "token")
    assert last_token < names.index("article") < names.index("audio")  # the article is sent the moment it is done
    chunks = [data for name, data in events if name == "audio_chunk"]
    assert chunks and {(c["format"], c["sample_rate"]) for c in chunks} == {("pcm", 16000)}
    record = events[-1][1]
    assert record["status"] == "complete" and record["timings_ms"]["first_audio"] > 0
    assert client.get(f"/v1/content/{record['id']}").json()["article"] == record["article"]
    stored, rate = sf.read(io.BytesIO(client.get(record["audio_url"]).content), dtype="int16")
    assert rate == 16000 and stored.tobytes() == b"".join(base64.b64decode(c["audio"]) for c in chunks)


def replica_counters() -> dict[str, int]:
    """The services' own counters, summed over their replicas: article streams closed early, sequences in the
    text engines, parts of narrations the voice service was asked for."""
    text = [info for name in ("text", "text-b") for info in replica_reports(APP, name).values()]
    voice = replica_reports(APP, "voice").values()
    return {
        "articles_cancelled": sum(
            info["requests"].get("write_article_stream", {}).get("cancelled", 0) for info in text
        ),
        "sequences_running": sum(info["running"] for info in text),  # a health probe may hold one for a moment
        "parts": sum(sum(info["requests"].get("narrate_part", {}).values()) for info in voice),
    }


def test_a_client_that_leaves_mid_article_stops_the_stages_in_the_replicas(
    client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    redeploy(slow_writing(deployed_app["config"], 0.05))
    wait_rolled_out()
    before = replica_counters()
    seen: list[str] = []
    body = {"topic": "a long story about the sea", "stream": True, "seed": 8}
    with client.stream("POST", "/v1/content", json=body) as response:
        for name, _ in iter_sse(response):
            seen.append(name)
            if name == "audio_chunk":
                break  # the listener heard the first sentence and closed the page
    left = time.monotonic()
    assert "audio_chunk" in seen and "article" not in seen
    while (now := replica_counters())["articles_cancelled"] == before["articles_cancelled"]:
        assert time.monotonic() - left < 30, "the text service's stream was never closed"
        time.sleep(0.2)
    print(f"the text replica closed the article stream {time.monotonic() - left:.2f} s after the client left")
    time.sleep(2)
    after = replica_counters()
    assert after["parts"] == now["parts"]  # no further part was sent to the voice service
    assert after["articles_cancelled"] == before["articles_cancelled"] + 1
    while replica_counters()["sequences_running"]:  # the engine freed the sequence (health probes come and go)
        assert time.monotonic() - left < 30, "the text engine still holds a sequence"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/content/c00000000000000000000000000000000", 404),
        ("/v1/content/c00000000000000000000000000000000/image", 404),
        ("/v1/content/not-an-id/audio", 422),
        ("/v1/content/..%2F..%2Fetc%2Fpasswd/image", 404),
    ],
)
def test_unknown_or_malformed_ids(client: httpx.Client, path: str, status: int) -> None:
    assert client.get(path).status_code == status


def test_bad_content_requests_name_the_field(client: httpx.Client) -> None:
    for body, field in [
        ({"topic": " "}, "topic"),
        ({"topic": "x", "length": "epic"}, "length"),
        ({"topic": "x", "image": {"width": 63}}, "image.width"),
        ({"topic": "x", "voice": {"response_format": "mp3"}}, "voice.response_format"),
        ({"topic": "x", "user_id": "../etc"}, "user_id"),
    ]:
        response = client.post("/v1/content", json=body)
        assert response.status_code == 422, body
        assert response.json()["error"]["param"] == field


def degraded_config(base: dict, image_timeout_s: float, **deployment_changes: dict) -> dict:
    """The session's config plus a second app, `degraded`, at /degraded, with the given deployment changes."""
    config = copy.deepcopy(base)
    app = extra_app(config, "degraded", services=("text", "image", "voice", "recommend", "pipeline"))
    for deployment in app["deployments"]:
        deployment.update(copy.deepcopy(deployment_changes.get(deployment["name"], {})))
        if deployment["name"] == "pipeline":
            deployment["user_config"]["timeouts_s"]["image"] = image_timeout_s
    config["applications"].append(app)
    return config


def test_without_an_image_replica_the_pipeline_degrades_within_the_stage_timeout(
    client: httpx.Client, deployed_app: dict, redeploy
) -> None:
    # The image replica cannot be placed (it asks for a resource no node has, like a lost GPU node): Ray
    # would queue the call for minutes; the stage must give up after its timeout. (A replica that never started
    # is still given its whole graceful shutdown when its app is removed, 20 s by default: one second here.)
    no_image = {
        "image": {
            "ray_actor_options": {"num_cpus": 0.25, "resources": {"lost_accelerator": 1}},
            "graceful_shutdown_timeout_s": 1,
        }
    }
    working = ("text", "voice", "recommend", "pipeline", "ingress")
    redeploy(degraded_config(deployed_app["config"], 3.0, **no_image), app="degraded", healthy=working)
    response = client.post("/degraded/v1/content", json={"topic": "storms", "user_id": "user-5"})
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "partial"
    assert set(record["errors"]) == {"image"} and "3s" in record["errors"]["image"]
    assert record["article"]["body"] and record["audio_url"] and len(record["recommendations"]) == 5
    assert record["image_url"] is None  # given up at the stage's 3 s timeout (its message says so), not waited for
    health = client.get("/degraded/v1/health")
    assert health.status_code == 503 and health.json()["services"]["image"]["status"] == "unavailable"

    # The text service failing leaves nothing to build on: a clear failure, nothing stored.
    failing_text = {
        **no_image,
        "text": {"user_config": {**_user_config(deployed_app, "text"), "faults": {"error_rate": 1}}},
    }
    redeploy(degraded_config(deployed_app["config"], 3.0, **failing_text), app="degraded", healthy=working)
    before = client.get("/v1/content", params={"limit": 1}).json()["total"]
    response = client.post("/degraded/v1/content", json={"topic": "storms"})
    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "failed" and "InjectedFault" in body["errors"]["article"]
    assert "text service failed" in body["error"]["message"]
    assert client.get("/v1/content", params={"limit": 1}).json()["total"] == before

    # The voice breaking half-way through a streamed article (its third part fails): what was made went out, the
    # record is partial and says how far the audio got, and no half-made audio is stored as the content's.
    writing_slowly = {"user_config": {**_user_config(deployed_app, "text"), "faults": {"stream_delay_s": 0.03}}}
    breaking_voice = {"user_config": {**_user_config(deployed_app, "voice"), "faults": {"fail_after": 2}}}
    config = degraded_config(deployed_app["config"], 3.0, **no_image, text=writing_slowly, voice=breaking_voice)
    redeploy(config, app="degraded", healthy=working)
    with client.stream("POST", "/degraded/v1/content", json={"topic": "tides", "stream": True, "seed": 3}) as r:
        events = sse_events(r)
    names = [name for name, _ in events]
    assert names.index("audio_chunk") < names.index("article")  # the voice spoke while the article was written
    assert names.count("audio_chunk") == 2 and names[-1] == "complete"
    record = events[-1][1]
    assert record["status"] == "partial" and set(record["errors"]) == {"image", "audio"}
    assert "fail_after" in record["errors"]["audio"] and "the audio stopped after 2 of" in record["errors"]["audio"]
    assert record["audio_url"] is None and record["article"]["body"]
    assert client.get(f"/degraded/v1/content/{record['id']}/audio").status_code == 404


def _user_config(deployed_app: dict, name: str) -> dict:
    deployments = deployed_app["config"]["applications"][0]["deployments"]
    return copy.deepcopy(next(d["user_config"] for d in deployments if d["name"] == name))
