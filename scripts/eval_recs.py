"""Offline evaluation of the recommender: popularity vs. ALS vs. the hybrid, on held-out events.

A seeded synthetic data set with planted user and item communities (``offline.interactions``). Per user, 20% of
events are held out; 10% of items are *new*: nobody touched them in training (all their events are held out),
and they are registered the way the pipeline registers content, with their text. Everything runs through the
real code path: the seed model folder is written by ``save_model_dir`` and loaded by the service's
``Recommender``; the new items sit in its SQLite store.

Reports precision@10, recall@10 and nDCG@10 on the held-out events of known items, and recall@10 on the new
items (cold start), as a Markdown table and JSON in ``eval/results/``. Targets, printed as pass/miss: ALS at
least 2x popularity on precision@10; the hybrid reaches new items that ALS alone cannot.

    make eval-recs          (or: python -m scripts.eval_recs --users 600 --items 400)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
DEFAULT_OUT = Path("eval/results")
TINY_EMBED = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tiny" / "embed"


def split(data, new_item_share: float, holdout: float, seed: int):
    """Train events, held-out events on known items, held-out events on new items, and the new items."""
    rng = np.random.default_rng(seed + 1)
    n_items = len(data.item_ids)
    new_items = set(rng.choice(n_items, size=max(1, int(n_items * new_item_share)), replace=False).tolist())
    by_user: dict[int, list[tuple[int, int, float]]] = {}
    for event in data.events:
        by_user.setdefault(event[0], []).append(event)
    train, test_known, test_new = [], {}, {}
    for user, events in by_user.items():
        known = [e for e in events if e[1] not in new_items]
        rng.shuffle(known)
        cut = max(1, int(len(known) * holdout))
        train += known[cut:]
        test_known[user] = {e[1] for e in known[:cut]}
        fresh = {e[1] for e in events if e[1] in new_items}
        if fresh:
            test_new[user] = fresh
    return train, test_known, test_new, new_items


def metrics(ranked: dict[int, list[int]], truth: dict[int, set[int]]) -> dict[str, float]:
    precision, recall, ndcg = [], [], []
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    for user, relevant in truth.items():
        if not relevant:
            continue
        top = ranked.get(user, [])[:K]
        hits = [item in relevant for item in top]
        precision.append(sum(hits) / K)
        recall.append(sum(hits) / min(len(relevant), K))
        ideal = discounts[: min(len(relevant), K)].sum()
        ndcg.append(float(np.dot(hits, discounts[: len(hits)])) / ideal)
    return {
        "precision@10": float(np.mean(precision)),
        "recall@10": float(np.mean(recall)),
        "ndcg@10": float(np.mean(ndcg)),
    }


def embedding_call(model: Path) -> Any:
    """The embedding service's class in process, as the recommend deployment reaches the embed deployment."""
    from deployments.embed import EmbedConfig, EmbeddingService, EmbedRequest
    from deployments.recommend.service import EmbedCall

    service = EmbeddingService(EmbedConfig(model=str(model), served_model_name=model.name))

    def vectors(texts: list[str], dimensions: int) -> list[list[float]]:
        return service.embed(EmbedRequest(texts=texts, dimensions=dimensions)).vectors

    return EmbedCall(vectors, model.name), service.dim


def evaluate(
    users: int, items: int, communities: int, events_per_user: int, seed: int, embed_model: Path | None = None
) -> dict:
    """Popularity, ALS alone, and the service's hybrid (exact and ANN) with hashed content vectors; with
    ``embed_model``, the hybrid again with the embedding service's vectors (the seam, measured)."""
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    from deployments.recommend import ItemIn, RecommendConfig, Recommender, RecommendRequest
    from deployments.recommend.model import save_model_dir
    from offline.interactions import planted_interactions

    started = time.perf_counter()
    data = planted_interactions(users, items, communities, events_per_user, seed=seed)
    train, test_known, test_new, new_items = split(data, new_item_share=0.1, holdout=0.2, seed=seed)
    rows, cols, vals = zip(*train, strict=True)
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(users, items), dtype=np.float32)
    als = AlternatingLeastSquares(factors=32, iterations=15, regularization=0.05, random_state=seed)
    als.fit(matrix, show_progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        seed_dir = Path(tmp) / "seed"
        known_texts = {data.item_ids[i]: t for i, t in enumerate(data.item_texts.values()) if i not in new_items}
        save_model_dir(seed_dir, als, matrix, data.user_ids, data.item_ids, item_texts=known_texts)
        config = RecommendConfig(
            model=str(seed_dir),
            store_url=f"sqlite:///{tmp}/store.db",
            trained_dir=f"{tmp}/versions",
            max_k=K,
        )
        service = Recommender(config.model_copy(update={"retrieval": "exact"}))  # the service's own engine
        # The same service answering from ANN candidates (HNSW) re-ranked exactly, on its own store.
        approximate = Recommender(
            config.model_copy(
                update={"retrieval": "approximate", "store_url": f"sqlite:///{tmp}/ann.db", "trained_dir": f"{tmp}/a"}
            )
        )
        hybrids = {"hybrid": service, "hybrid (ANN)": approximate}
        if embed_model is not None:
            call, dim = embedding_call(embed_model)
            embedded = config.model_copy(
                update={
                    "retrieval": "exact",
                    "content_vectors": "embed",
                    "content_dim": dim,
                    "store_url": f"sqlite:///{tmp}/embed.db",
                    "trained_dir": f"{tmp}/e",
                }
            )
            hybrids["hybrid (embed vectors)"] = Recommender(embedded, embed=call)
        new = [ItemIn(item_id=data.item_ids[i], text=data.item_texts[data.item_ids[i]]) for i in sorted(new_items)]
        for recommender in hybrids.values():
            recommender.add_items(new)
        index = {item_id: n for n, item_id in enumerate(data.item_ids)}
        popular = [index[i] for i, _ in service.popular()]
        ranked: dict[str, dict[int, list[int]]] = {"popularity": {}, "als": {}, **{name: {} for name in hybrids}}
        for user in range(users):
            seen = set(matrix[user].indices.tolist())
            ranked["popularity"][user] = [i for i in popular if i not in seen][:K]
            ids, _ = als.recommend(user, matrix[user], N=K, filter_already_liked_items=True)
            ranked["als"][user] = [int(i) for i in ids]
            request = RecommendRequest(user_id=data.user_ids[user], k=K)
            for name, recommender in hybrids.items():
                ranked[name][user] = [index[i.item_id] for i in recommender.recommend(request).items]
        overlap = [
            len(set(ranked["hybrid (ANN)"][u]) & set(ranked["hybrid"][u])) / max(1, len(ranked["hybrid"][u]))
            for u in range(users)
        ]
        ann_recall = float(np.mean(overlap))

    table = {}
    for name, lists in ranked.items():
        table[name] = metrics(lists, test_known)
        table[name]["new-item recall@10"] = metrics(
            {u: [i for i in lists[u] if i in new_items] for u in lists}, test_new
        )["recall@10"]
        reached = {i for u in lists for i in lists[u] if i in new_items}
        table[name]["new items reached"] = len(reached) / len(new_items)
    targets = {
        "ALS >= 2x popularity on precision@10": table["als"]["precision@10"] >= 2 * table["popularity"]["precision@10"],
        "hybrid reaches new items ALS cannot": table["hybrid"]["new-item recall@10"] > 0
        and table["hybrid"]["new items reached"] > table["als"]["new items reached"],
        "ANN recall@10 against exact >= 0.95": ann_recall >= 0.95,
    }
    return {
        "data": {
            "users": users,
            "items": items,
            "communities": communities,
            "events_per_user": events_per_user,
            "train_events": len(train),
            "held_out_known": sum(map(len, test_known.values())),
            "held_out_new": sum(map(len, test_new.values())),
            "new_items": len(new_items),
            "seed": seed,
        },
        "metrics": table,
        "ann_recall@10": round(ann_recall, 4),
        "targets": targets,
        "seconds": round(time.perf_counter() - started, 2),
    }


def markdown(result: dict) -> str:
    columns = ["precision@10", "recall@10", "ndcg@10", "new-item recall@10", "new items reached"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in result["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    d = result["data"]
    lines += [
        "",
        f"{d['users']} users, {d['items']} items in {d['communities']} planted communities, "
        f"{d['train_events']} training events; held out: {d['held_out_known']} events on known items, "
        f"{d['held_out_new']} on {d['new_items']} new items (seed {d['seed']}). `hybrid` scores every item;"
        f" `hybrid (ANN)` re-ranks HNSW candidates: recall@10 against exact {result['ann_recall@10']:.3f}.",
        "",
    ]
    lines += [f"- {'pass' if ok else 'MISS'}: {name}" for name, ok in result["targets"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--communities", type=int, default=8)
    parser.add_argument("--events-per-user", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--embed-model",
        type=Path,
        default=TINY_EMBED if TINY_EMBED.exists() else None,
        help="an encoder folder: also evaluate with the embedding service's vectors (default: the tiny one)",
    )
    args = parser.parse_args()
    result = evaluate(args.users, args.items, args.communities, args.events_per_user, args.seed, args.embed_model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recommend.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (args.out / "recommend.md").write_text(table)
    print(table)
    sys.exit(0 if all(result["targets"].values()) else 1)


if __name__ == "__main__":
    main()
