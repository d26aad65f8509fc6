"""The recommender learns: retraining on recorded events, versions shared by replicas, cold start by content."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from deployments.errors import Conflict
from deployments.recommend import (
    InteractionIn,
    ItemIn,
    RecommendConfig,
    Recommender,
    RecommendRequest,
    SimilarRequest,
)
from offline.interactions import TOPICS
from offline.tiny_models import N_COMMUNITIES


def make_config(tiny_models: Path, tmp_path: Path, **training) -> RecommendConfig:
    return RecommendConfig(
        model=str(tiny_models / "recommend"),
        store_url=f"sqlite:///{tmp_path}/rec.db",
        trained_dir=str(tmp_path / "versions"),
        training={"factors": 8, "iterations": 15, "after_events": None, **training},
        refresh_s=0.2,
        max_k=20,
    )


@pytest.fixture()
def config(tiny_models, tmp_path) -> RecommendConfig:
    return make_config(tiny_models, tmp_path)


def ids(recs) -> list[str]:
    return [item.item_id for item in recs.items]


def test_retraining_learns_a_pattern_the_seed_did_not_know(config: RecommendConfig) -> None:
    replica = Recommender(config)
    # item-0 (community 0) and item-1 (community 1): nothing links them in the seed data.
    assert "item-1" not in ids(replica.similar(SimilarRequest(item_id="item-0", k=3)))
    fans = [f"fan-{n}" for n in range(25)]
    replica.record([InteractionIn(user_id=u, item_id=i, event="share") for u in fans for i in ("item-0", "item-1")])
    report = replica.retrain()
    assert (report.events, report.trigger, report.algorithm) == (50, "admin", "als")
    assert replica.snapshot.version == report.version != "seed"
    assert "item-1" in ids(replica.similar(SimilarRequest(item_id="item-0", k=3)))
    # A user who shares item-0 now is steered to item-1, which only the learned pattern explains.
    replica.record([InteractionIn(user_id="late-fan", item_id="item-0", event="share")])
    assert "item-1" in ids(replica.recommend(RecommendRequest(user_id="late-fan", k=3)))


def test_a_new_version_reaches_every_replica_and_survives_a_restart(config: RecommendConfig) -> None:
    first, second = Recommender(config), Recommender(config)
    first.record([InteractionIn(user_id="someone", item_id="item-4", event="like")])
    version = first.retrain().version
    assert second.snapshot.version == "seed"
    assert second.refresh() and second.snapshot.version == version  # what the background loop calls
    restarted = Recommender(config)  # a new replica (or the whole app after a restart) loads the current version
    assert restarted.snapshot.version == version
    assert ids(restarted.recommend(RecommendRequest(user_id="user-3"))) == ids(
        first.recommend(RecommendRequest(user_id="user-3"))
    )
    folder = Path(config.trained_dir) / version
    assert sorted(p.name for p in folder.iterdir()) == [
        "als.npz",
        "ann-content.usearch",  # the version carries its item space and ANN indexes: every replica loads them
        "ann-factors.usearch",
        "ann-unit.usearch",
        "catalog.npz",
        "meta.json",
        "space.json",
        "space.npz",
    ]
    for npz in folder.glob("*.npz"):
        with np.load(npz, allow_pickle=False) as data:  # never pickles
            assert data.files


def test_only_one_replica_trains_at_a_time(config: RecommendConfig) -> None:
    first, second = Recommender(config), Recommender(config)
    assert first.store.try_lease("train", first.holder, 60)
    with pytest.raises(Conflict) as err:
        second.retrain()
    assert (err.value.param, err.value.status) == ("retrain", 409)
    first.store.release_lease("train", first.holder)
    assert second.retrain().version


def test_background_retrain_after_n_events(tiny_models, tmp_path) -> None:
    config = make_config(tiny_models, tmp_path, after_events=3)
    trainer, follower = Recommender(config, background=True), Recommender(config, background=True)
    try:
        assert trainer.retrain_due() is None
        trainer.record([InteractionIn(user_id="u", item_id=f"item-{i}", event="view") for i in range(3)])
        assert trainer.retrain_due() == "after_events"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            "seed" in {trainer.snapshot.version, follower.snapshot.version}
            or trainer.snapshot.version != follower.snapshot.version
        ):
            time.sleep(0.1)
        assert trainer.snapshot.version == follower.snapshot.version != "seed"
        assert trainer.retrain_due() is None  # the events are in the version now
        assert len([p for p in (tmp_path / "versions").iterdir() if p.name.startswith("v")]) == 1  # trained once
    finally:
        trainer.close()
        follower.close()


def test_interval_policy_needs_new_events(config: RecommendConfig, tiny_models, tmp_path) -> None:
    replica = Recommender(make_config(tiny_models, tmp_path, interval_s=60))
    assert replica.retrain_due(now=time.time() + 3600) is None  # nothing new: no retrain
    replica.record([InteractionIn(user_id="u", item_id="item-1", event="view")])
    assert replica.retrain_due(now=time.time() + 3600) == "interval"


def test_bpr_is_a_config_option(tiny_models, tmp_path) -> None:
    replica = Recommender(make_config(tiny_models, tmp_path, algorithm="bpr", iterations=50))
    replica.record([InteractionIn(user_id="bpr-user", item_id="item-2", event="like")])
    report = replica.retrain()
    assert report.algorithm == "bpr" and replica.snapshot.algorithm == "bpr"
    restarted = Recommender(replica.config)
    assert restarted.snapshot.algorithm == "bpr"
    for user in ("user-5", "bpr-user", "newcomer"):
        if user == "newcomer":
            restarted.record([InteractionIn(user_id=user, item_id="item-6", event="like")])
        recs = restarted.recommend(RecommendRequest(user_id=user, k=5))
        assert len(recs.items) == 5 and recs.model_version == report.version


def test_new_content_is_recommended_and_similar_before_any_interaction(config: RecommendConfig) -> None:
    replica = Recommender(config)
    community = 2
    text = " ".join(TOPICS[community][:6])
    replica.add_items([ItemIn(item_id="c-fresh", title="A new story", text=text)])
    similar = replica.similar(SimilarRequest(item_id="c-fresh", k=5)).items
    assert len(similar) == 5
    assert sum(int(i.item_id.split("-")[1]) % N_COMMUNITIES == community for i in similar) >= 4
    # Users of that community (user-n with n % 4 == 2) get it; some user of another community does not need to.
    reached = [
        u
        for u in range(community, 60, N_COMMUNITIES)
        if "c-fresh" in ids(replica.recommend(RecommendRequest(user_id=f"user-{u}", k=10)))
    ]
    assert reached, "no user of the item's community was recommended the new item"
    item = next(
        i
        for i in replica.recommend(RecommendRequest(user_id=f"user-{reached[0]}", k=10)).items
        if i.item_id == "c-fresh"
    )
    assert item.reason == "content"


def test_a_fresh_install_without_a_seed_serves_fresh_and_popular_then_learns(tmp_path: Path) -> None:
    """Production starts with no trained file: new content is fresh, engaged content popular; a retrain on the
    recorded events then gives users collaborative recommendations."""
    config = RecommendConfig(
        model=None,
        store_url=f"sqlite:///{tmp_path}/rec.db",
        trained_dir=str(tmp_path / "versions"),
        training={"factors": 4, "iterations": 10, "after_events": None},
    )
    recommender = Recommender(config)
    assert recommender.recommend(RecommendRequest(user_id="anyone", k=5)).items == []
    with pytest.raises(Conflict, match="nothing to train"):
        recommender.retrain()
    recommender.add_items([ItemIn(item_id=f"post-{n}", title=f"Post {n}", text="harbour tides") for n in range(8)])
    cold = recommender.recommend(RecommendRequest(user_id="anyone", k=5)).items
    assert cold and {i.reason for i in cold} <= {"fresh", "popular"}
    events = [
        InteractionIn(user_id=f"reader-{u}", item_id=f"post-{(u + n) % 8}", event="like")
        for u in range(12)
        for n in range(3)
    ]
    recommender.record(events)
    assert "popular" in {i.reason for i in recommender.recommend(RecommendRequest(user_id="anyone", k=5)).items}
    report = recommender.retrain()
    assert report.users == 12 and report.items == 8
    learned = recommender.recommend(RecommendRequest(user_id="reader-1", k=3))
    assert learned.model_version == report.version and learned.items
    assert {i.reason for i in learned.items} <= {"als", "content"}
