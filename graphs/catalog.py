"""The content pipeline's catalog: content records, idempotency keys and the outbox, in any SQLAlchemy database.

SQLite by default (the local profile), PostgreSQL in a cluster (its URL from the environment: ``env:NAME``), with
the same code. The pipeline writes assets first (graphs/assets.py) and the record last, in one transaction with
what it owes other services, so a record is never visible before its assets exist; a crash in between leaves at
most unreferenced asset files, never a half-written record.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from deployments.errors import Conflict
from deployments.sql import MigratedStore


@dataclass(frozen=True)
class OutboxEntry:
    """Something the catalog owes another service (``kind``: ``register_item``), with its payload."""

    id: int
    content_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int


class ContentCatalog(MigratedStore):
    """Content records, the experiment variants that made them, and the outbox, in any SQLAlchemy database.

    Its schema is versioned with Alembic (migrations/catalog/) and brought up to date when a replica opens it. A
    record and what it owes other services are written in one transaction (the transactional outbox), so a
    stored content is never forgotten by the recommender, and a failed write leaves nothing half-written.
    """

    environment = "catalog"

    def add(
        self,
        record: dict[str, Any],
        outbox: list[tuple[str, dict[str, Any]]] = (),
        claim_s: float = 0.0,
        idempotency_key: str | None = None,
    ) -> list[OutboxEntry]:
        """Store a record, its variants, what it owes other services (``(kind, payload)``) and the end of its
        idempotency key, atomically. The outbox entries start claimed for ``claim_s`` by the writer, which
        delivers them at once: they are returned."""
        now = time.time()
        with self.writing() as conn:
            if idempotency_key is not None:
                # Only while the key still stands for this content: an attempt cancelled while it stored (its
                # client gone) gives its key back, and a resend may already be making the content anew.
                ended = conn.execute(
                    sa.update(KEYS)
                    .where(
                        KEYS.c.key == idempotency_key,
                        KEYS.c.content_id == record["id"],
                        KEYS.c.state == "making",  # a second attempt on the same content id stores nothing
                    )
                    .values(state="done")
                )
                if ended.rowcount != 1:
                    raise Conflict(  # given back, or taken by another attempt: not stored, the key makes one content
                        f"idempotency key {idempotency_key!r} no longer stands for content {record['id']}",
                        "Idempotency-Key",
                    )
            conn.execute(
                sa.insert(CONTENT),
                {
                    "id": record["id"],
                    "created_at": record.get("created_at", now),
                    "status": record["status"],
                    "user_id": record.get("user_id"),
                    "record": json.loads(json.dumps(record)),
                },
            )
            variants = [
                {"content_id": record["id"], "stage": stage, **tag} for stage, tag in record.get("variants", {}).items()
            ]
            if variants:
                conn.execute(sa.insert(VARIANTS), variants)
            owed = []
            for kind, payload in outbox:
                entry_id = conn.scalar(
                    sa.insert(OUTBOX)
                    .values(
                        content_id=record["id"],
                        kind=kind,
                        payload=payload,
                        created_at=now,
                        attempts=0,
                        next_attempt_at=now + claim_s,
                    )
                    .returning(OUTBOX.c.id)
                )
                owed.append(OutboxEntry(entry_id, record["id"], kind, payload, 0))
            return owed

    def variant_contents(self) -> list[tuple[str, str, str]]:
        """(experiment, variant, content id) for every stored content an experiment variant helped make."""
        t = VARIANTS
        with self.reading() as conn:
            rows = conn.execute(sa.select(t.c.experiment, t.c.variant, t.c.content_id).distinct())
            return [(e, v, c) for e, v, c in rows]

    def update(self, record: dict[str, Any]) -> None:
        """Replace a stored record (its status and id stay as stored)."""
        with self.writing() as conn:
            conn.execute(
                sa.update(CONTENT)
                .where(CONTENT.c.id == record["id"])
                .values(status=record["status"], record=json.loads(json.dumps(record)))
            )

    def get(self, content_id: str) -> dict[str, Any] | None:
        with self.reading() as conn:
            return conn.scalar(sa.select(CONTENT.c.record).where(CONTENT.c.id == content_id))

    def page(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        t = CONTENT
        with self.reading() as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0
            query = sa.select(t.c.record).order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)
            return list(conn.scalars(query)), int(total)

    # --- idempotency keys ---------------------------------------------------------------------------------
    def claim_key(
        self, key: str, fingerprint: str, content_id: str, lease_s: float, takeover: bool = False
    ) -> tuple[str, str, dict[str, Any] | None]:
        """Start making the content of ``key``: ``("new", content_id, None)``, or what the key already stands
        for: ``("done", id, record)``, ``("busy", id, None)`` while another attempt makes it, ``("mismatch", id,
        None)`` for a different request under the same key. ``takeover`` resumes an attempt whose replica died
        (the same content id, so there is never a second content)."""
        now = time.time()
        query = sa.select(KEYS).where(KEYS.c.key == key)
        if self.database.dialect.name == "postgresql":
            query = query.with_for_update()
        for _ in range(2):  # a first insert may race with another replica's
            try:
                with self.writing() as conn:
                    row = conn.execute(query).first()
                    if row is None:
                        conn.execute(
                            sa.insert(KEYS).values(
                                key=key,
                                fingerprint=fingerprint,
                                content_id=content_id,
                                state="making",
                                claimed_until=now + lease_s,
                                created_at=now,
                            )
                        )
                        return "new", content_id, None
                    if row.fingerprint != fingerprint:
                        return "mismatch", row.content_id, None
                    if row.state == "done":
                        record = conn.scalar(sa.select(CONTENT.c.record).where(CONTENT.c.id == row.content_id))
                        return "done", row.content_id, record
                    if takeover or row.claimed_until < now:
                        conn.execute(sa.update(KEYS).where(KEYS.c.key == key).values(claimed_until=now + lease_s))
                        return "new", row.content_id, None
                    return "busy", row.content_id, None
            except sa.exc.IntegrityError:
                continue
        return "busy", content_id, None

    def renew_key(self, key: str, content_id: str, lease_s: float) -> bool:
        """The attempt making ``key``'s content is alive: its claim runs ``lease_s`` more. False: the key is no
        longer this attempt's to renew (made, given back, or claimed for another content)."""
        with self.writing() as conn:
            renewed = conn.execute(
                sa.update(KEYS)
                .where(KEYS.c.key == key, KEYS.c.content_id == content_id, KEYS.c.state == "making")
                .values(claimed_until=time.time() + lease_s)
            )
        return renewed.rowcount == 1

    def release_key(self, key: str) -> None:
        """A failed attempt gives its key back: the client may try again with it."""
        with self.writing() as conn:
            conn.execute(sa.delete(KEYS).where(KEYS.c.key == key, KEYS.c.state == "making"))

    # --- the outbox ---------------------------------------------------------------------------------------
    def claim_due(self, limit: int, claim_s: float) -> list[OutboxEntry]:
        """Undelivered entries whose time has come, claimed for ``claim_s`` so that the relay of another
        replica skips them meanwhile (PostgreSQL: rows locked with SKIP LOCKED while claiming)."""
        now = time.time()
        t = OUTBOX
        query = (
            sa.select(t.c.id, t.c.content_id, t.c.kind, t.c.payload, t.c.attempts)
            .where(t.c.delivered_at.is_(None), t.c.next_attempt_at <= now)
            .order_by(t.c.id)
            .limit(limit)
        )
        if self.database.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        with self.writing() as conn:
            rows = list(conn.execute(query))
            if rows:
                conn.execute(sa.update(t).where(t.c.id.in_([r.id for r in rows])).values(next_attempt_at=now + claim_s))
        return [OutboxEntry(r.id, r.content_id, r.kind, r.payload, r.attempts) for r in rows]

    def delivered(self, entry_ids: list[int]) -> None:
        with self.writing() as conn:
            conn.execute(sa.update(OUTBOX).where(OUTBOX.c.id.in_(entry_ids)).values(delivered_at=time.time()))

    def failed(self, entry: OutboxEntry, error: str, retry_in_s: float) -> None:
        with self.writing() as conn:
            conn.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.id == entry.id)
                .values(attempts=entry.attempts + 1, next_attempt_at=time.time() + retry_in_s, last_error=error[:500])
            )

    def outbox_state(self, content_id: str | None = None) -> dict[str, int]:
        """How many entries are delivered and pending (for one content, or all)."""
        t = OUTBOX
        query = sa.select(t.c.delivered_at.is_not(None), sa.func.count()).group_by(t.c.delivered_at.is_not(None))
        if content_id is not None:
            query = query.where(t.c.content_id == content_id)
        with self.reading() as conn:
            counts = {bool(done): int(n) for done, n in conn.execute(query)}
        return {"delivered": counts.get(True, 0), "pending": counts.get(False, 0)}


METADATA = sa.MetaData()
CONTENT = sa.Table(
    "content",
    METADATA,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Column("record", sa.JSON, nullable=False),
)
VARIANTS = sa.Table(  # which experiment variant made which content: engagement per variant
    "content_variants",
    METADATA,
    sa.Column("content_id", sa.String(40), primary_key=True),
    sa.Column("stage", sa.String(32), primary_key=True),
    sa.Column("experiment", sa.String(128), nullable=False),
    sa.Column("variant", sa.String(128), nullable=False),
)
KEYS = sa.Table(
    "idempotency_keys",
    METADATA,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("content_id", sa.String(40), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_until", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
OUTBOX = sa.Table(
    "outbox",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("content_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
)
