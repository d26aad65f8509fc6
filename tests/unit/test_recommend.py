"""Recommendation service on ALS factors trained with implicit on a planted-community data set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.errors import ServiceError
from deployments.recommend import InteractionIn, RecommendConfig, Recommender, RecommendRequest, SimilarRequest
from offline.tiny_models import N_COMMUNITIES


def community(item_id: str) -> int:
    return int(item_id.split("-")[1]) % N_COMMUNITIES


@pytest.fixture()
def recommender(tiny_models, tmp_path) -> Recommender:
    config = RecommendConfig(model=str(tiny_models / "recommend"), store_url=f"sqlite:///{tmp_path}/rec.db", max_k=20)
    return Recommender(config)


def test_known_users_get_their_communitys_items(recommender: Recommender) -> None:
    same = total = 0
    for user in range(20):
        items = recommender.recommend(RecommendRequest(user_id=f"user-{user}", k=4)).items
        assert len(items) == 4
        assert {item.reason for item in items} <= {"als", "content"}  # collaborative, or text-led
        same += sum(community(item.item_id) == user % N_COMMUNITIES for item in items)
        total += len(items)
    assert same / total >= 0.7  # chance would be 1 / N_COMMUNITIES


def test_seen_items_are_excluded_unless_asked(recommender: Recommender) -> None:
    snap = recommender.snapshot
    seen = {snap.item_ids[i] for i in snap.user_items[0].indices}
    fresh = recommender.recommend(RecommendRequest(user_id="user-0", k=20)).items
    assert not seen & {item.item_id for item in fresh}
    everything = recommender.recommend(RecommendRequest(user_id="user-0", k=20, exclude_seen=False)).items
    assert seen & {item.item_id for item in everything}


def test_unknown_users_get_popular_items(recommender: Recommender) -> None:
    items = recommender.recommend(RecommendRequest(user_id="somebody-new", k=4)).items
    assert [item.reason for item in items] == ["popular"] * 4
    assert [item.score for item in items] == sorted((item.score for item in items), reverse=True)


def test_a_new_users_likes_steer_their_recommendations(recommender: Recommender) -> None:
    liked = [f"item-{i}" for i in (2, 6, 10)]  # community 2
    recommender.record([InteractionIn(user_id="newcomer", item_id=i, event="like") for i in liked])
    items = recommender.recommend(RecommendRequest(user_id="newcomer", k=5)).items
    assert items[0].reason == "als"
    assert not set(liked) & {item.item_id for item in items}
    assert sum(community(item.item_id) == 2 for item in items) >= 4


def test_interactions_persist_in_the_store(recommender: Recommender, tiny_models) -> None:
    recommender.record([InteractionIn(user_id="keeper", item_id="item-3", event="share")])
    reopened = Recommender(recommender.config)
    assert reopened.store.user_events("keeper") == [("item-3", 6.0)]
    assert "item-3" not in {i.item_id for i in reopened.recommend(RecommendRequest(user_id="keeper")).items}


def test_similar_items_exclude_the_item_and_share_its_community(recommender: Recommender) -> None:
    items = recommender.similar(SimilarRequest(item_id="item-5", k=5)).items
    assert len(items) == 5
    assert "item-5" not in {item.item_id for item in items}
    assert all(item.reason == "similar" for item in items)
    assert sum(community(item.item_id) == 1 for item in items) >= 4


@pytest.mark.parametrize(
    ("call", "field", "status"),
    [
        (lambda r: r.record([InteractionIn(user_id="u", item_id="item-999", event="like")]), "item_id", 404),
        (lambda r: r.similar(SimilarRequest(item_id="nope")), "item_id", 404),
        (lambda r: r.recommend(RecommendRequest(user_id="u", k=50)), "k", 400),  # above the config's max_k
    ],
)
def test_bad_requests_name_the_field(recommender: Recommender, call, field, status) -> None:
    with pytest.raises(ServiceError) as err:
        call(recommender)
    assert (err.value.param, err.value.status) == (field, status)


def test_unknown_item_leaves_the_store_untouched(recommender: Recommender) -> None:
    batch = [
        InteractionIn(user_id="u", item_id="item-1", event="view"),
        InteractionIn(user_id="u", item_id="missing", event="view"),
    ]
    with pytest.raises(ServiceError):
        recommender.record(batch)
    assert recommender.store.user_events("u") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": "u", "item_id": "item-1", "event": "poke"}, "event"),
        ({"user_id": "", "item_id": "item-1", "event": "like"}, "user_id"),
        ({"user_id": "u/../x", "item_id": "item-1", "event": "like"}, "user_id"),
        ({"user_id": "u", "item_id": "item-1", "event": "like", "weight": 0}, "weight"),
    ],
)
def test_interaction_schema(fields, field) -> None:
    with pytest.raises(ValidationError) as err:
        InteractionIn(**fields)
    assert err.value.errors()[0]["loc"][0] == field


def test_k_zero_is_rejected_by_the_schema() -> None:
    with pytest.raises(ValidationError) as err:
        RecommendRequest(user_id="u", k=0)
    assert err.value.errors()[0]["loc"][0] == "k"


def test_registered_items_are_fresh_for_cold_users_and_accept_interactions(recommender: Recommender) -> None:
    from deployments.recommend import ItemIn

    assert recommender.add_items([ItemIn(item_id="c-new-1", title="New"), ItemIn(item_id="c-new-2")]) == 2
    assert recommender.add_items([ItemIn(item_id="c-new-1", title="Again")]) == 0  # known items stay as they are
    items = recommender.recommend(RecommendRequest(user_id="cold", k=5)).items
    assert [i.reason for i in items[:2]] == ["fresh", "fresh"]
    assert {i.item_id for i in items[:2]} == {"c-new-1", "c-new-2"}
    assert [i.reason for i in items[2:]] == ["popular"] * 3
    recommender.record([InteractionIn(user_id="cold", item_id="c-new-1", event="listen")])
    after = recommender.recommend(RecommendRequest(user_id="cold", k=5)).items
    assert "c-new-1" not in {i.item_id for i in after}  # seen now


def test_content_vectors_can_come_from_the_embedding_service(tiny_models, tmp_path) -> None:
    """The seam: with ``content_vectors: embed`` every content vector is the encoder's (here the service class
    in process, as the deployment's handle calls it), tagged with it; a recommender that switches back to hashed
    words does not mix the stored vectors in: it vectorises those items again."""
    from deployments.embed import EmbedConfig, EmbeddingService, EmbedRequest
    from deployments.recommend import ItemIn
    from deployments.recommend.service import EmbedCall

    encoder = EmbeddingService(EmbedConfig(model=str(tiny_models / "embed"), served_model_name="tiny-bert"))
    calls: list[int] = []

    def vectors(texts: list[str], dimensions: int) -> list[list[float]]:
        calls.append(len(texts))
        return encoder.embed(EmbedRequest(texts=texts, dimensions=dimensions)).vectors

    store = f"sqlite:///{tmp_path}/rec.db"
    config = RecommendConfig(
        model=str(tiny_models / "recommend"), store_url=store, content_vectors="embed", content_dim=32
    )
    embedded = Recommender(config, embed=EmbedCall(vectors, "tiny-bert"))
    assert embedded.encoder.key == "embed:tiny-bert:32" and embedded.space().content.shape[1] == 32
    embedded.add_items([ItemIn(item_id="c-new", title="Tides", text="tides and harbours")])
    assert calls and embedded.similar(SimilarRequest(item_id="c-new", k=5)).items

    hashed = Recommender(config.model_copy(update={"content_vectors": "hashed"}))
    assert hashed.encoder.key == "hashed:32"
    before = hashed.encoder.encoded
    assert "c-new" in hashed.space().index and hashed.encoder.encoded > before  # re-vectorised, not reused

    with pytest.raises(ValueError, match="embed service"):
        Recommender(config)  # no embedding service to call
