"""The content pipeline's logic on the real tiny engines, composed through in-process handle stand-ins."""

from __future__ import annotations

import asyncio
import base64
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
from graphs.schemas import fingerprint
from tests.fakes.handles import FakeHandle


@pytest.fixture(scope="module")
def replicas(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("rec") / "rec.db"
    replicas = {
        "text": TextDeployment.func_or_class({"model": str(tiny_models / "text"), "default_max_tokens": 24}),
        "image": ImageDeployment.func_or_class(
            {"model": str(tiny_models / "image"), "default_steps": 2, "default_width": 64, "default_height": 64}
        ),
        "voice": VoiceDeployment.func_or_class({"model": str(tiny_models / "voice")}),
        "recommend": RecommendDeployment.func_or_class(
            {"model": str(tiny_models / "recommend"), "store_url": f"sqlite:///{store}"}
        ),
    }
    yield replicas
    for replica in replicas.values():  # their background work ends with the module, not at interpreter exit
        replica.model.close()
    replicas["text"].model.engine.close(wait=True)  # the text engine's loop thread, once its drain is done


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


def test_sequential_stream_sends_tokens_before_the_media_and_the_record_last(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path, composition="sequential")

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
    assert "audio_chunk" not in names  # the sequential composition sends the audio whole, once stored


def collect(pipeline: ContentPipeline, request: ContentRequest) -> list[dict]:
    async def events() -> list[dict]:
        return [event async for event in pipeline.create_stream(request)]

    return run(events())


def pcm_of(events: list[dict]) -> bytes:
    return b"".join(base64.b64decode(e["data"]["audio"]) for e in events if e["event"] == "audio_chunk")


def test_streamed_audio_comes_before_the_article_is_complete_and_is_what_is_stored(replicas, tmp_path) -> None:
    # The text service writes at a production model's pace (the tiny model writes a whole article in less time
    # than the voice takes to say its title), so the order of events says what it should.
    faults = {"text": {"stream_delay_s": 0.03}}
    pipeline = make_pipeline(replicas, tmp_path, faults=faults)  # streamed is the default composition
    events = collect(pipeline, ContentRequest(topic="lighthouses", seed=3, stream=True))
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "complete"
    assert names.index("audio_chunk") < names.index("article")  # the voice speaks while the article is written
    chunks = [e["data"] for e in events if e["event"] == "audio_chunk"]
    assert len(chunks) >= 3 and [c["index"] for c in chunks] == list(range(len(chunks)))
    assert {(c["format"], c["sample_rate"]) for c in chunks} == {("pcm", 16000)}
    record = events[-1]["data"]
    assert record["status"] == "complete" and set(record["timings_ms"]) >= {"first_audio", "first_image", "audio"}
    stored, rate = sf.read(io.BytesIO(pipeline.asset(record["id"], "audio")), dtype="int16")
    assert rate == 16000 and stored.tobytes() == pcm_of(events)  # the stored samples are the chunks joined
    assert record["audio_duration_s"] == pytest.approx(sum(c["duration_s"] for c in chunks), abs=1e-3)
    # The title is read first, then the body: the text the client saw, sentence by sentence.
    again = collect(pipeline, ContentRequest(topic="lighthouses", seed=3, stream=True))
    assert pcm_of(again) == pcm_of(events)  # a seeded content sounds the same every time


def test_streamed_and_sequential_compose_the_same_article_and_image(replicas, tmp_path) -> None:
    request = ContentRequest(topic="harbours", seed=11)
    streamed = make_pipeline(replicas, tmp_path / "s")
    sequential = make_pipeline(replicas, tmp_path / "q", composition="sequential")
    a, b = run(streamed.create(request)), run(sequential.create(request))
    assert a.status == b.status == "complete" and a.article == b.article
    assert a.image_prompt == b.image_prompt  # the image's prompt reads only the title and the first sentence
    assert streamed.asset(a.id, "image") == sequential.asset(b.id, "image")
    assert a.audio_duration_s and b.audio_duration_s


def test_a_voice_failing_mid_article_leaves_a_partial_record_saying_how_far(replicas, tmp_path) -> None:
    pipeline = make_pipeline(replicas, tmp_path, faults={"voice": {"fail_after": 2}})
    events = collect(pipeline, ContentRequest(topic="storms", seed=4, stream=True))
    record = events[-1]["data"]
    assert record["status"] == "partial" and set(record["errors"]) == {"audio"}
    assert "fail_after" in record["errors"]["audio"]
    assert "the audio stopped after 2 of" in record["errors"]["audio"]
    assert len([e for e in events if e["event"] == "audio_chunk"]) == 2  # what was made went out
    assert record["audio_url"] is None and pipeline.asset(record["id"], "audio") is None  # not stored as whole
    assert record["image_url"] and record["article"]["body"]
    assert pipeline.get(record["id"]).status == "partial"


def test_a_client_that_leaves_stops_every_stage(replicas, tmp_path) -> None:
    """Leaving after the first audio: the text engine frees the sequence, no further part goes to the voice
    service, and the image (asked for only once the article is complete) is never made."""
    faults = {"text": {"stream_delay_s": 0.03}}  # a production model's pace: the client leaves mid-article
    pipeline = make_pipeline(replicas, tmp_path, faults=faults, image={"prompt_from": "article"})
    voice, image, text = (replicas[name] for name in ("voice", "image", "text"))
    before = {
        "parts": _outcomes(voice, "narrate_part"),
        "images": _outcomes(image, "generate"),
        "articles": _outcomes(text, "write_article_stream"),
    }

    async def leave_after_first_audio() -> list[str]:
        seen: list[str] = []
        stream = pipeline.create_stream(ContentRequest(topic="tides", seed=6, stream=True))
        async for event in stream:
            seen.append(event["event"])
            if event["event"] == "audio_chunk":
                break
        await stream.aclose()  # what Serve does when the HTTP client disconnects
        rendered = voice.model.sentences_rendered
        await asyncio.sleep(1.0)  # the stages stop within a second
        assert voice.model.sentences_rendered <= rendered + 1  # at most the sentence already being rendered
        return seen

    seen = run(leave_after_first_audio())
    assert seen[-1] == "audio_chunk" and "article" not in seen
    articles = _outcomes(text, "write_article_stream")
    assert articles.get("cancelled", 0) == before["articles"].get("cancelled", 0) + 1  # closed in the replica
    assert text.model.engine.describe()["running"] == 0  # and the engine holds no sequence of it
    assert _outcomes(image, "generate") == before["images"]  # never asked for
    parts = _outcomes(voice, "narrate_part")
    spoken = parts.get("ok", 0) - before["parts"].get("ok", 0)
    assert spoken >= 1 and parts.get("cancelled", 0) >= before["parts"].get("cancelled", 0)
    assert pipeline.page(10, 0).total == 0  # nothing half-made is stored


def _outcomes(replica, method: str) -> dict[str, int]:
    return dict(run(replica.describe())["requests"].get(method, {}))


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
    # An attempt whose replica died after claiming the key: its claim is still running.
    state, content_id, _ = pipeline.catalog.claim_key("k-2", fingerprint(request), "c" + "0" * 32, lease_s=600)
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


def test_a_takeover_whose_content_the_first_attempt_stored_answers_that_content(replicas, tmp_path) -> None:
    """A replica looked dead and was not: its attempt stores the content while the takeover still makes it (the
    same content id). The takeover writes nothing and answers the stored content: one content per key."""
    pipeline = make_pipeline(replicas, tmp_path)
    request = ContentRequest(topic="harbours", user_id="user-8", seed=4)
    _, content_id, _ = pipeline.catalog.claim_key("k-4", fingerprint(request), "c" + "1" * 32, lease_s=600)
    first = {"id": content_id, "status": "complete", "topic": "harbours", "length": "short", "created_at": 1.0}
    real_write = pipeline._write

    def first_attempt_stores_then(ctx, *args):
        pipeline.catalog.add(first, idempotency_key="k-4")  # the first attempt finishes first
        return real_write(ctx, *args)

    pipeline._write = first_attempt_stores_then
    answered = run(pipeline.create(request, key="k-4", takeover=True))
    assert answered.id == content_id and answered.created_at == 1.0  # the first attempt's content
    assert pipeline.page(10, 0).total == 1 and pipeline.asset(content_id, "audio") is None  # nothing written twice
