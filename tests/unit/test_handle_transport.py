"""Which handle the ingress and the pipeline call a service through: by value over the replica's gRPC server for
the services whose requests and answers are small (text and its experiment variants), through the object store
for media, and through the object store for all when the caller's config turns it off."""

from __future__ import annotations

from typing import Any

from deployments.registry import SERVICES
from edge.ingress import Ingress
from graphs.pipeline import ContentPipeline
from graphs.schemas import ContentRequest, StageVariant


class RecordingHandle:
    """A handle that remembers the options it was copied with (Serve's ``options`` returns a new handle)."""

    def __init__(self, name: str, options: dict[str, Any] | None = None) -> None:
        self.name, self.given = name, options or {}

    def options(self, **kwargs: Any) -> RecordingHandle:
        return RecordingHandle(self.name, {**self.given, **kwargs})


def ingress(config: dict[str, Any]) -> Ingress:
    names = ("text", "text-b", "image", "voice", "recommend", "embed", "pipeline")
    return Ingress({n: RecordingHandle(n) for n in names}, {"access": {"anonymous": True}, **config}, ("text-b",))


def test_text_and_its_variants_are_called_by_value_and_media_through_the_object_store() -> None:
    edge = ingress({})
    assert [name for name, spec in SERVICES.items() if spec.by_value] == ["text"]
    for deployment, service in (("text", None), ("text", "text"), ("text-b", "text")):
        handle = edge.handle(deployment, service)
        assert handle.given == {"_by_reference": False}, (deployment, service)
        assert edge.handle(deployment, service) is handle  # made once, not per request
    for deployment in ("image", "voice", "recommend", "embed", "pipeline"):
        assert edge.handle(deployment).given == {}, deployment


def test_by_value_calls_can_be_turned_off() -> None:
    edge = ingress({"by_value_calls": False})
    assert edge.handle("text").given == {} and edge.handle("text-b", "text").given == {}


def test_the_pipeline_reads_the_article_stream_by_value_unless_its_config_turns_it_off(tmp_path) -> None:
    names = ("text", "text-b", "image", "voice", "recommend")
    stores = {"catalog_url": f"sqlite:///{tmp_path}/content.db", "asset_url": str(tmp_path / "assets")}
    on_variant = {"article": StageVariant(experiment="e", variant="b", deployment="text-b")}
    for by_value, wanted in ((True, {"_by_reference": False}), (False, {})):
        pipeline = ContentPipeline({n: RecordingHandle(n) for n in names}, {**stores, "by_value_calls": by_value})
        for variants, deployment in (({}, "text"), (on_variant, "text-b")):
            making = pipeline._begin(ContentRequest(topic="tides"), _no_events, variants, "c1")
            article = making.article_stream
            assert (article.name, article.given) == (deployment, wanted), (by_value, deployment)
            again = pipeline._begin(ContentRequest(topic="x"), _no_events, variants, "c2")
            assert again.article_stream is article  # made once, not per content
            # The sequential composition chains the article's response into image and voice: by reference.
            for stage in ("article", "image", "audio", "recommendations"):
                assert making.handles[stage].given == {}, stage


async def _no_events(event: str, data: dict[str, Any]) -> None:
    pass


def test_an_answer_over_the_grpc_message_cap_is_an_error_that_names_the_knob() -> None:
    import grpc

    from deployments.errors import ServiceError, from_exception

    over = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Received message larger than max (6291470 vs. 4194304)",
    )
    error = from_exception(over, "text")
    assert type(error) is ServiceError and error.status == 500
    assert "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH" in error.message and "text" in error.message
