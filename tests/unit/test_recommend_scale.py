"""The recommender at catalogue scale, in behaviour (timings are in `make bench-recs`): a new item costs one
vectorisation and one estimate, never a refit; the ANN path finds the exact top-k on small catalogues; a published
version carries its space and indexes, and a replica that loads it reads no item text."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.recommend import (
    InteractionIn,
    ItemIn,
    Recommender,
    RecommendRequest,
    SimilarRequest,
)
from deployments.recommend.space import ItemSpace, SpaceSettings
from deployments.recommend.vectors import ContentEncoder
from offline.interactions import TOPICS
from tests.unit.test_recommend_training import ids, make_config


def test_a_new_item_is_vectorised_once_and_added_without_a_rebuild(tiny_models, tmp_path) -> None:
    replica = Recommender(make_config(tiny_models, tmp_path))
    space = replica.space()
    before = (replica.encoder.encoded, space.estimates, space.n)
    words = " ".join(TOPICS[0][:6])
    replica.add_items([ItemIn(item_id="new-1", title="Fresh", text=words)])
    assert replica.encoder.encoded == before[0] + 1  # vectorised once, on arrival
    after = replica.space()
    assert after is space  # the same space, grown by one: no rebuild, no refit over the catalogue
    assert (space.estimates, space.n) == (before[1] + 1, before[2] + 1)
    assert replica.encoder.encoded == before[0] + 1  # the replica read its stored vector, not its text
    other = Recommender(make_config(tiny_models, tmp_path))  # another replica follows it the same way
    assert "new-1" in other.space().index
    assert "new-1" not in ids(replica.similar(SimilarRequest(item_id="new-1", k=5)))  # never itself


@pytest.mark.parametrize("users", [["user-1", "user-7", "user-13", "user-22"]])
def test_the_approximate_path_finds_the_exact_top_k_on_a_small_catalogue(tiny_models, tmp_path, users) -> None:
    exact = Recommender(make_config(tiny_models, tmp_path / "exact").model_copy(update={"retrieval": "exact"}))
    approximate = Recommender(
        make_config(tiny_models, tmp_path / "ann").model_copy(update={"retrieval": "approximate"})
    )
    for replica in (exact, approximate):
        replica.add_items([ItemIn(item_id=f"new-{n}", title="x", text=" ".join(TOPICS[n][:8])) for n in range(4)])
    assert approximate.space().indexes and not exact.space().indexes
    for user in users:
        request = RecommendRequest(user_id=user, k=10)
        assert ids(approximate.recommend(request)) == ids(exact.recommend(request))
    for item in ("item-0", "item-5", "new-2"):
        request = SimilarRequest(item_id=item, k=10)
        assert ids(approximate.similar(request)) == ids(exact.similar(request))


def test_a_published_version_carries_its_space_and_a_replica_loads_it(tiny_models, tmp_path) -> None:
    config = make_config(tiny_models, tmp_path).model_copy(update={"retrieval": "approximate"})
    trainer = Recommender(config)
    trainer.add_items([ItemIn(item_id="new-1", title="Fresh", text=" ".join(TOPICS[1][:6]))])
    trainer.record([InteractionIn(user_id="fan", item_id="item-3", event="like")])
    version = trainer.retrain().version
    replica = Recommender(config)
    space = replica.space()
    assert replica.snapshot.version == version
    assert replica.encoder.encoded == 0  # loaded with the version: no item text read, nothing vectorised
    assert "new-1" in space.index and space.indexes and len(space.indexes["content"]) == space.n
    request = RecommendRequest(user_id="user-3", k=5)
    assert ids(replica.recommend(request)) == ids(trainer.recommend(request))


def test_the_space_round_trips_and_new_items_get_factors_from_their_neighbours(tmp_path) -> None:
    from deployments.recommend.model import FactorModel

    encoder = ContentEncoder(64)
    settings = SpaceSettings(neighbours=3, approximate=True)
    rng = np.random.default_rng(0)
    space = ItemSpace(8, 64, settings)
    texts = [" ".join(TOPICS[n % len(TOPICS)][:5]) for n in range(30)]
    communities = rng.standard_normal((len(TOPICS), 8))  # items of one topic share factors (plus noise)
    factors = communities[np.arange(30) % len(TOPICS)] + 0.1 * rng.standard_normal((30, 8))
    space.add([f"i{n}" for n in range(30)], encoder.encode(texts), factors, np.ones(30, bool))
    space.add(["cold"], encoder.encode([texts[4]]))  # the same words as i4 (and its community)
    cold = space.factors[space.index["cold"]]
    assert np.any(cold) and float(space.unit[space.index["cold"]] @ space.unit[space.index["i4"]]) > 0.9
    space.save(tmp_path)
    loaded = ItemSpace.load(tmp_path, settings)
    assert loaded is not None and loaded.item_ids == space.item_ids
    assert np.allclose(loaded.factors, space.factors) and len(loaded.indexes["unit"]) == 31
    assert FactorModel.empty().item_ids == []


def test_a_large_build_indexes_content_once_and_estimates_like_the_exact_path(monkeypatch) -> None:
    """Above ``EXACT_NEIGHBOURS_BELOW`` trained items the build finds untrained items' neighbours through the
    content index it then serves from (built once, holding every row once); the factors it estimates match the
    exact neighbour search."""
    import scipy.sparse as sp

    from deployments.recommend import space as space_module
    from deployments.recommend.model import FactorModel, _EmptyFactors

    encoder, rng = ContentEncoder(64), np.random.default_rng(3)
    trained_n, cold_n = space_module.EXACT_NEIGHBOURS_BELOW + 500, 40
    topic = np.arange(trained_n) % len(TOPICS)
    texts = [" ".join(rng.choice(TOPICS[t], 6)) for t in topic]
    communities = rng.standard_normal((len(TOPICS), 8)).astype(np.float32)
    factors = communities[topic] + 0.05 * rng.standard_normal((trained_n, 8)).astype(np.float32)
    item_ids = [f"i{n}" for n in range(trained_n)]
    snapshot = FactorModel(
        version="v1",
        algorithm="als",
        model=_EmptyFactors(np.zeros((1, 8), np.float32), factors),
        user_ids=["u"],
        item_ids=item_ids,
        user_items=sp.csr_matrix(np.ones((1, trained_n), np.float32)),
    )
    trained_vectors = encoder.encode(texts)
    cold_texts = [" ".join(rng.choice(TOPICS[n % len(TOPICS)], 6)) for n in range(cold_n)]
    registered = list(zip(item_ids, trained_vectors, strict=True))
    registered += list(zip([f"cold{n}" for n in range(cold_n)], encoder.encode(cold_texts), strict=True))
    built: list[str] = []
    original = ItemSpace._new_index
    monkeypatch.setattr(ItemSpace, "_new_index", lambda self, name: built.append(name) or original(self, name))

    settings = SpaceSettings(neighbours=5, approximate=True, expansion_search=256)
    space = ItemSpace.build(snapshot, registered, encoder, settings)
    assert space.n == trained_n + cold_n and built.count("content") == 1
    assert len(space.indexes["content"]) == space.n  # every row once: trained rows, then the untrained ones
    cold_rows = [space.index[f"cold{n}"] for n in range(cold_n)]
    exact = space_module._estimate_exactly(
        space.content[cold_rows], space.content[:trained_n], space.factors[:trained_n], SpaceSettings(5, False)
    )
    agree = [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(space.factors[cold_rows], exact, strict=True)
    ]
    assert np.median(agree) > 0.99 and min(agree) > 0.9


def test_a_replica_opens_a_new_version_space_before_it_serves_that_version(tiny_models, tmp_path, monkeypatch) -> None:
    """A version's item space takes seconds to open at a million items: a refresh opens it before swapping
    snapshot and space together, so no query waits for it (nor times out the pipeline's recommendations)."""
    config = make_config(tiny_models, tmp_path).model_copy(update={"retrieval": "approximate"})
    replica = Recommender(config)
    replica.warm()
    trainer = Recommender(config)
    trainer.record([InteractionIn(user_id="fan", item_id="item-3", event="like")])
    version = trainer.retrain().version
    opened: list[str] = []
    original = replica._open_space
    monkeypatch.setattr(
        replica, "_open_space", lambda snap, settings: opened.append(snap.version) or original(snap, settings)
    )
    assert replica.refresh() and opened == [version]
    snap, space = replica.serving()
    assert snap.version == version and "item-3" in space.index
    answer = replica.recommend(RecommendRequest(user_id="user-3", k=5))
    assert answer.model_version == version and opened == [version]  # the query found the space open


def test_a_replica_starts_on_its_saved_space_while_the_database_is_down(tiny_models, tmp_path, monkeypatch) -> None:
    """Opening the space at start must not make a database outage a start failure (Serve would keep replacing
    the replica): the saved space opens from its files; new items are followed once the database is back."""
    from deployments.errors import Unavailable

    config = make_config(tiny_models, tmp_path).model_copy(update={"retrieval": "approximate"})
    trainer = Recommender(config)
    trainer.record([InteractionIn(user_id="fan", item_id="item-3", event="like")])
    version = trainer.retrain().version
    replica = Recommender(config)

    def down() -> float:
        raise Unavailable("the database is unavailable: test", retry_after_s=1)

    monkeypatch.setattr(replica.store, "newest_item_time", down)
    replica.warm()  # does not raise
    assert replica._space is not None and replica._space[0][0] == version  # the space is open all the same
    monkeypatch.undo()
    assert "item-3" in replica.space().index
