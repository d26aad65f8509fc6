"""The offline recommender evaluation runs end to end and meets its quality targets on the seeded data."""

from __future__ import annotations

from scripts.eval_recs import evaluate, markdown


def test_eval_meets_its_targets() -> None:
    result = evaluate(users=300, items=200, communities=6, events_per_user=16, seed=3)
    table = result["metrics"]
    assert table["als"]["precision@10"] >= 2 * table["popularity"]["precision@10"] > 0
    assert table["als"]["new-item recall@10"] == 0  # ALS alone cannot rank what nobody touched
    assert table["hybrid"]["new-item recall@10"] > 0.1
    assert all(result["targets"].values())
    assert "| hybrid |" in markdown(result)
