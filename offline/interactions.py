"""Seeded synthetic interaction data with planted communities, for the tiny recommender and its evaluation.

Users belong to a community and mostly touch their community's items, with a popularity skew inside each
community (so popularity is a fair baseline, not a straw man). Every item has a short text drawn from its
community's vocabulary plus common words, so content similarity carries real signal for new items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOPICS: tuple[tuple[str, ...], ...] = (
    ("volcano", "lava", "eruption", "magma", "crater", "basalt", "geyser", "tectonic", "caldera", "pumice"),
    ("ocean", "reef", "coral", "whale", "tide", "kelp", "dolphin", "lagoon", "plankton", "seagrass"),
    ("galaxy", "nebula", "comet", "orbit", "telescope", "planet", "asteroid", "quasar", "pulsar", "eclipse"),
    ("violin", "symphony", "chorus", "melody", "sonata", "orchestra", "rhythm", "harmony", "cello", "tempo"),
    ("bread", "sourdough", "yeast", "oven", "pastry", "flour", "croissant", "baguette", "knead", "crust"),
    ("glacier", "iceberg", "tundra", "permafrost", "fjord", "avalanche", "snowfield", "moraine", "frost", "sleet"),
    ("robot", "sensor", "actuator", "servo", "gripper", "lidar", "drone", "firmware", "circuit", "battery"),
    ("garden", "tulip", "compost", "orchid", "seedling", "pollen", "hedge", "mulch", "fern", "blossom"),
)
COMMON = ("story", "guide", "today", "new", "look", "inside", "world", "notes", "deep", "simple", "why", "how")


def item_text(community: int, rng: np.random.Generator, topic_words: int = 4, common_words: int = 3) -> str:
    """A short item text: words of its community's topic plus common words that every topic shares."""
    topic = TOPICS[community % len(TOPICS)]
    words = list(rng.choice(topic, size=topic_words, replace=False)) + list(
        rng.choice(COMMON, size=common_words, replace=False)
    )
    rng.shuffle(words)
    return " ".join(words)


@dataclass
class PlantedData:
    user_ids: list[str]
    item_ids: list[str]
    user_community: np.ndarray
    item_community: np.ndarray
    item_texts: dict[str, str]
    events: list[tuple[int, int, float]]  # (user index, item index, weight)


def planted_interactions(
    n_users: int,
    n_items: int,
    n_communities: int,
    events_per_user: int,
    *,
    off_community: float = 0.15,
    popularity_skew: float = 1.0,
    seed: int = 0,
) -> PlantedData:
    """Users touch ``events_per_user`` distinct items: their community's with probability ``1-off_community``
    (Zipf-like popularity inside the community), any other item otherwise."""
    rng = np.random.default_rng(seed)
    user_comm = np.arange(n_users) % n_communities
    item_comm = rng.permutation(np.arange(n_items) % n_communities)
    popularity = 1.0 / np.power(rng.permutation(n_items) + 1.0, popularity_skew)
    events: list[tuple[int, int, float]] = []
    for u in range(n_users):
        own = np.flatnonzero(item_comm == user_comm[u])
        other = np.flatnonzero(item_comm != user_comm[u])
        n_other = int(rng.binomial(events_per_user, off_community))
        n_own = min(events_per_user - n_other, own.size)
        p_own = popularity[own] / popularity[own].sum()
        picks = list(rng.choice(own, size=n_own, replace=False, p=p_own))
        picks += list(rng.choice(other, size=min(n_other, other.size), replace=False))
        events += [(u, int(i), float(rng.integers(1, 5))) for i in picks]
    item_ids = [f"item-{i}" for i in range(n_items)]
    texts = {item_ids[i]: item_text(int(item_comm[i]), rng) for i in range(n_items)}
    return PlantedData(
        user_ids=[f"user-{u}" for u in range(n_users)],
        item_ids=item_ids,
        user_community=user_comm,
        item_community=item_comm,
        item_texts=texts,
        events=events,
    )
