"""The recommender's own store: interactions, registered items and the training lease, in any SQLAlchemy database.

Its schema is versioned with Alembic (migrations/recommend/) and brought up to date when a replica opens it. Every
operation runs in one transaction; a database that cannot be reached is ``Unavailable`` (503 +
Retry-After at the edge), never a 500, and nothing is half-written.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from deployments.recommend.schemas import ItemIn
from deployments.sql import MigratedStore

METADATA = sa.MetaData()
INTERACTIONS = sa.Table(
    "interactions",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("item_id", sa.String(128), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
ITEMS = sa.Table(
    "items",
    METADATA,
    sa.Column("item_id", sa.String(128), primary_key=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=True),  # float16 content vector, computed once on arrival
)
# What a replica reads of an item to place it: id, time, stored vector, and the text only when there is no vector.
_WITH_VECTOR = (
    ITEMS.c.item_id,
    ITEMS.c.created_at,
    ITEMS.c.vector,
    sa.case((ITEMS.c.vector.is_(None), ITEMS.c.title + "\n" + ITEMS.c.text), else_=sa.literal("")),
)
LEASES = sa.Table(
    "leases",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("until", sa.Float, nullable=False),
)


class InteractionStore(MigratedStore):
    """Interactions, items and the training lease the recommender owns."""

    environment = "recommend"

    # --- items --------------------------------------------------------------------------------------------
    def add_items(self, items: list[ItemIn], vectors: list[bytes] | None = None) -> int:
        """Register items with their content vectors; ones already known are left as they are (so registering
        twice is harmless). Returns how many were new."""
        now = time.time()
        blobs = dict(zip((i.item_id for i in items), vectors or [None] * len(items), strict=True))
        with self.writing() as conn:
            known = set(self.known_items([i.item_id for i in items], conn))
            fresh = {i.item_id: i for i in items if i.item_id not in known}
            rows = [
                {"item_id": i.item_id, "title": i.title, "text": i.text, "created_at": now, "vector": blobs[i.item_id]}
                for i in fresh.values()
            ]
            if not rows:
                return 0
            # Another replica may register the same item right now: its row wins, ours is skipped.
            if self.database.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            # executemany ("insertmanyvalues" batches): one statement compiled once, not one bind per value.
            query = insert(ITEMS).on_conflict_do_nothing(index_elements=["item_id"]).returning(ITEMS.c.item_id)
            return len(conn.execute(query, rows).all())

    def known_items(self, item_ids: list[str], conn: Any = None) -> list[str]:
        found: list[str] = []
        with self._unavailable(), _nullcontext(conn) if conn is not None else self.database.connect() as c:
            for start in range(0, len(item_ids), 500):  # keep IN lists small
                chunk = item_ids[start : start + 500]
                found += list(c.scalars(sa.select(ITEMS.c.item_id).where(ITEMS.c.item_id.in_(chunk))))
        return found

    def newest_items(self, limit: int) -> list[str]:
        query = sa.select(ITEMS.c.item_id).order_by(ITEMS.c.created_at.desc(), ITEMS.c.item_id).limit(limit)
        with self.reading() as conn:
            return list(conn.scalars(query))

    def item_texts(self) -> dict[str, str]:
        """Every registered item with its title and text, for content similarity."""
        t = ITEMS
        with self.reading() as conn:
            return {
                i: f"{title}\n{text}".strip()
                for i, title, text in conn.execute(sa.select(t.c.item_id, t.c.title, t.c.text))
            }

    def item_titles(self, item_ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self.reading() as conn:
            for start in range(0, len(item_ids), 500):
                chunk = item_ids[start : start + 500]
                query = sa.select(ITEMS.c.item_id, ITEMS.c.title).where(ITEMS.c.item_id.in_(chunk))
                out.update({i: t for i, t in conn.execute(query)})
        return out

    def items_since(self, created_after: float) -> list[tuple[str, float, bytes | None, str]]:
        """Items registered at or after ``created_after``: (id, created_at, vector, text when there is no
        vector). The replicas' way to follow new items without reading the catalogue."""
        t = ITEMS
        query = sa.select(*_WITH_VECTOR).where(t.c.created_at >= created_after).order_by(t.c.created_at, t.c.item_id)
        with self.reading() as conn:
            return [(i, float(c), v, x or "") for i, c, v, x in conn.execute(query)]

    def item_times_since(
        self, created_after: float, after: tuple[float, str] | None = None, limit: int = 10_000
    ) -> list[tuple[str, float]]:
        """Ids and registration times of items from ``created_after`` on, in (created_at, item_id) order, at
        most ``limit`` of them past ``after`` (keyset paging): how a replica finds the items it lacks without
        reading the vectors of those it holds."""
        t = ITEMS
        query = sa.select(t.c.item_id, t.c.created_at)
        if after is None:
            query = query.where(t.c.created_at >= created_after)
        else:  # a range on the created_at index, then past the last id of the same time
            query = query.where(
                t.c.created_at >= max(created_after, after[0]),
                sa.or_(t.c.created_at > after[0], t.c.item_id > after[1]),
            )
        query = query.order_by(t.c.created_at, t.c.item_id).limit(limit)
        with self.reading() as conn:
            return [(i, float(c)) for i, c in conn.execute(query)]

    def items_by_id(self, item_ids: list[str]) -> list[tuple[str, float, bytes | None, str]]:
        """These items as ``items_since`` gives them, in registration order."""
        t = ITEMS
        out: list[tuple[str, float, bytes | None, str]] = []
        with self.reading() as conn:
            for start in range(0, len(item_ids), 500):
                chunk = item_ids[start : start + 500]
                query = sa.select(*_WITH_VECTOR).where(t.c.item_id.in_(chunk))
                out += [(i, float(c), v, x or "") for i, c, v, x in conn.execute(query)]
        return sorted(out, key=lambda row: (row[1], row[0]))

    def newest_item_time(self) -> float:
        """When the newest item was registered (an index lookup: cheap enough to ask every second)."""
        with self.reading() as conn:
            return float(conn.scalar(sa.select(sa.func.max(ITEMS.c.created_at))) or 0.0)

    # --- interactions -------------------------------------------------------------------------------------
    def add(self, rows: list[dict[str, Any]]) -> None:
        with self.writing() as conn:
            conn.execute(INTERACTIONS.insert(), rows)

    def user_events(self, user_id: str) -> list[tuple[str, float]]:
        t = INTERACTIONS
        query = sa.select(t.c.item_id, sa.func.sum(t.c.weight)).where(t.c.user_id == user_id).group_by(t.c.item_id)
        with self.reading() as conn:
            return [(item, float(weight)) for item, weight in conn.execute(query)]

    def item_totals(self) -> dict[str, float]:
        t = INTERACTIONS
        with self.reading() as conn:
            rows = conn.execute(sa.select(t.c.item_id, sa.func.sum(t.c.weight)).group_by(t.c.item_id))
            return {item: float(weight) for item, weight in rows}

    def event_counts(self, item_ids: list[str]) -> dict[str, int]:
        """How many events each of these items received."""
        t = INTERACTIONS
        counts: dict[str, int] = {}
        with self.reading() as conn:
            for start in range(0, len(item_ids), 500):  # keep IN lists small
                chunk = item_ids[start : start + 500]
                query = sa.select(t.c.item_id, sa.func.count()).where(t.c.item_id.in_(chunk)).group_by(t.c.item_id)
                counts.update({item: int(n) for item, n in conn.execute(query)})
        return counts

    def last_event_id(self) -> int:
        with self.reading() as conn:
            return int(conn.execute(sa.select(sa.func.max(INTERACTIONS.c.id))).scalar() or 0)

    def training_events(self, upto: int) -> list[tuple[str, str, float]]:
        """Every (user, item, summed weight) recorded up to event id ``upto``."""
        t = INTERACTIONS
        query = (
            sa.select(t.c.user_id, t.c.item_id, sa.func.sum(t.c.weight))
            .where(t.c.id <= upto)
            .group_by(t.c.user_id, t.c.item_id)
        )
        with self.reading() as conn:
            return [(u, i, float(w)) for u, i, w in conn.execute(query)]

    # --- the training lease -------------------------------------------------------------------------------
    def try_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the named lease if it is free, expired or already ours: one conditional write, so of replicas
        racing for it exactly one wins (PostgreSQL and SQLite alike)."""
        now = time.time()
        t = LEASES
        with self.writing() as conn:
            if conn.execute(sa.select(t.c.name).where(t.c.name == name)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(t).values(name=name, holder=holder, until=now + seconds))
                    return True
                except sa.exc.IntegrityError:  # another replica inserted it first
                    pass
            taken = conn.execute(
                sa.update(t)
                .where(t.c.name == name, sa.or_(t.c.until < now, t.c.holder == holder))
                .values(holder=holder, until=now + seconds)
            )
            return taken.rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        with self.writing() as conn:
            conn.execute(sa.update(LEASES).where(LEASES.c.name == name, LEASES.c.holder == holder).values(until=0.0))


class _nullcontext:
    """A connection handed in by the caller: used as it is, not closed."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        return None
