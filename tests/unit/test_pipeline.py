"""The content pipeline's logic on the real tiny engines, composed through in-process handle stand-ins."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import pytest
import soundfile as sf
from PIL import Image

from deployments.errors import ServiceError
from deployments.image import ImageDeployment
from deployments.recommend import RecommendDeployment
from deployments.text import TextDeployment
from deployments.voice import VoiceDeployment
from graphs.pipeline import ContentPipeline, ContentRequest
from tests.fakes.handles import FakeHandle


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("rec") / "rec.db"
    return {
        "text": TextDeployment.func_or_class({"model": str(tiny_models / "text"), "default_max_tokens": 24}),
        "image": ImageDeployment.func_or_class(
            {"model": str(tiny_models / "image"), "default_steps": 2, "default_width": 64, "default_height": 64}
        ),
        "voice": VoiceDeployment.func_or_class({"model": str(tiny_models / "voice")}),
        "recommend": RecommendDeployment.func_or_class(
            {"model": str(tiny_models / "recommend"), "store_url": f"sqlite:///{store}"}
        ),
    }


def make_pipeline(replicas, tmp_path, faults: dict | None = None, **config) -> ContentPipeline:
    """A pipeline over the shared replicas; ``faults`` sets each named service's fault injection."""
    for name, replica in replicas.items():
        wanted = (faults or {}).get(name, {})
        asyncio.run(replica.reconfigure({**replica.model.config.model_dump(), "faults": wanted}))
    return ContentPipeline(handles(replicas), config=store_config(tmp_path, **config))


def handles(replicas) -> dict[str, FakeHandle]:
    return {name: FakeHandle(replica) for name, replica in replicas.items()}


def store_config(tmp_path, **config) -> dict:
    return {"catalog_url": f"sqlite:///{tmp_path}/content.db", "asset_url": str(tmp_path / "assets"), **config}


def run(coro):
    return asyncio.run(coro)


def test_complete_content_is_stored_with_its_assets_and_becomes_an_item(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path)
    record = run(pipeline.create(ContentRequest(topic="lighthouses", user_id="user-1", seed=5)))
    assert record.status == "complete" and record.errors == {}
    assert record.article.title and record.article.body
    assert record.image_url == f"/v1/content/{record.id}/image"
    assert [item.reason for item in record.recommendations] == ["als"] * 5
    assert set(record.timings_ms) >= {"article", "image", "audio", "recommendations", "store", "total"}
    assert pipeline.get(record.id) == record
    assert Image.open(io.BytesIO(pipeline.asset(record.id, "image"))).format == "PNG"
    audio, rate = sf.read(io.BytesIO(pipeline.asset(record.id, "audio")))
    assert rate == 16000 and len(audio) / rate == pytest.approx(record.audio_duration_s, abs=1e-3)
    assert replicas["recommend"].model.store.known_items([record.id]) == [record.id]


def test_same_seed_same_article(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path)
    a = run(pipeline.create(ContentRequest(topic="tides", seed=9)))
    b = run(pipeline.create(ContentRequest(topic="tides", seed=9)))
    assert a.article == b.article and a.id != b.id
    assert pipeline.asset(a.id, "image") == pipeline.asset(b.id, "image")


def test_a_failing_image_service_gives_a_partial_record(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path, faults={"image": {"error_rate": 1.0}})
    record = run(pipeline.create(ContentRequest(topic="boats", user_id="user-2")))
    assert record.status == "partial"
    assert set(record.errors) == {"image"} and "InjectedFault" in record.errors["image"]
    assert record.image_url is None and record.audio_url and record.article and record.recommendations
    assert pipeline.asset(record.id, "image") is None
    assert pipeline.get(record.id).status == "partial"


def test_a_slow_voice_service_times_out_within_its_stage_timeout(replicas, tmp_path) -> None:
    pipeline = make_pipeline(
        replicas, tmp_path, faults={"voice": {"delay_s": 30}}, timeouts_s={"audio": 0.5, "article": 60}
    )
    started = time.perf_counter()
    record = run(pipeline.create(ContentRequest(topic="rain")))
    assert time.perf_counter() - started < 10
    assert record.status == "partial"
    assert record.errors == {"audio": "the voice service did not answer within 0.5s"}
    assert record.image_url and record.audio_url is None


def test_without_an_article_the_request_fails_and_nothing_is_stored(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path, faults={"text": {"error_rate": 1.0}})
    with pytest.raises(ServiceError) as err:
        run(pipeline.create(ContentRequest(topic="anything")))
    assert err.value.record.status == "failed"
    assert "InjectedFault" in err.value.record.errors["article"]
    assert err.value.status == 500
    assert pipeline.page(10, 0).total == 0


def test_stream_sends_tokens_before_the_media_and_the_record_last(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path)

    async def collect():
        return [event async for event in pipeline.create_stream(ContentRequest(topic="stars", seed=2, stream=True))]

    events = run(collect())
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "complete"
    first_media = min(names.index(stage) for stage in ("image", "audio", "recommendations"))
    assert "token" in names[: names.index("article")]
    assert names.index("article") < first_media
    tokens = "".join(e["data"]["text"] for e in events if e["event"] == "token")
    article = events[names.index("article")]["data"]
    assert article["title"] in tokens or article["body"] in tokens
    assert events[-1]["data"]["status"] == "complete"
    streamed = run(pipeline.create(ContentRequest(topic="stars", seed=2)))
    assert streamed.article.body == article["body"]  # streaming and not streaming write the same article


def test_a_crash_while_storing_leaves_no_record(replicas, tmp_path, monkeypatch) -> None:
    pipeline = make_pipeline(replicas, tmp_path)

    def broken_insert(record, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline.catalog, "add", broken_insert)
    with pytest.raises(ServiceError) as err:
        run(pipeline.create(ContentRequest(topic="x")))
    assert "disk full" in err.value.record.errors["store"]
    assert pipeline.get(err.value.record.id) is None
    assert pipeline.page(10, 0).total == 0


def test_an_idempotency_key_stands_for_one_content(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path)
    request = ContentRequest(topic="lighthouses", user_id="user-7", seed=3)
    first = run(pipeline.create(request, key="k-1"))
    again = run(pipeline.create(request, key="k-1"))  # the stored record, not a second content
    assert again == first and pipeline.page(10, 0).total == 1
    with pytest.raises(ServiceError) as mismatch:  # the same key for another request
        run(pipeline.create(ContentRequest(topic="tides", user_id="user-7"), key="k-1"))
    assert mismatch.value.status == 400 and mismatch.value.param == "Idempotency-Key"


def test_a_key_in_the_making_is_busy_until_its_replica_is_known_dead(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path)
    request = ContentRequest(topic="harbours", user_id="user-8", seed=4)
    fingerprint = hashlib.sha256(request.model_dump_json(exclude={"stream"}).encode()).hexdigest()
    # An attempt whose replica died after claiming the key: its claim is still running.
    state, content_id, _ = pipeline.catalog.claim_key("k-2", fingerprint, "c" + "0" * 32, lease_s=600)
    assert state == "new"
    with pytest.raises(ServiceError) as busy:
        run(pipeline.create(request, key="k-2"))
    assert busy.value.status == 409 and busy.value.headers()["Retry-After"]
    resent = run(pipeline.create(request, key="k-2", takeover=True))  # the ingress resends: same content id
    assert resent.id == content_id and resent.status == "complete"
    assert run(pipeline.create(request, key="k-2")) == resent and pipeline.page(10, 0).total == 1


def test_a_failed_attempt_gives_its_key_back(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path, faults={"text": {"error_rate": 1.0}})
    request = ContentRequest(topic="storms", user_id="user-9")
    with pytest.raises(ServiceError):
        run(pipeline.create(request, key="k-3"))
    pipeline = make_pipeline(replicas, tmp_path)
    assert run(pipeline.create(request, key="k-3")).status == "complete"  # the client tries again with it


def test_a_replica_shutting_down_stops_its_outbox_relay(replicas, tmp_path) -> None:
    """Serve calls a replica's ``__del__`` when it stops it (a scale-down, an update): the relay stops with it."""
    from graphs.deployment import PipelineDeployment

    async def scenario() -> tuple[bool, asyncio.Task]:
        replica = PipelineDeployment.func_or_class(handles(replicas), config=store_config(tmp_path))
        await replica.check_health()  # Serve's probe starts the relay
        running, task = replica.relay.running, replica.relay._task
        replica.__del__()
        await asyncio.sleep(0)  # the cancellation lands at the task's next step
        return running, task

    running, task = run(scenario())
    assert running and task.cancelled()
