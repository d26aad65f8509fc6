"""Stored responses of the Responses API: what ``store: true`` keeps, so ``previous_response_id`` can continue a
conversation through any ingress replica and any text variant, and ``GET`` / ``DELETE /v1/responses/{id}`` work.

The edge owns it (the text service stays stateless): one row per response with the answer and the whole
conversation it ended (the messages the model read, then its own turn), the API key it belongs to, and when it
expires (``responses.retention_s``). Expired rows are never answered and are purged as new ones are written. SQLite
by default (the local profile), PostgreSQL in a cluster (``env:NAME`` URL), migrated with Alembic
(migrations/responses/).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import Field

from deployments.common import StrictModel
from deployments.sql import DatabaseConfig, MigratedStore

PURGE_EVERY_S = 60.0  # a replica deletes expired rows at most this often (as it writes)
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")  # every id this store holds; any other is unknown without a query


def new_response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


class ResponsesConfig(StrictModel):
    """Where the Responses API keeps what ``store: true`` asks to keep, and for how long."""

    store_url: str = Field(
        "sqlite:///data/responses.db",
        description="SQLAlchemy URL, or `env:NAME` for a secret; relative SQLite paths resolve against the project.",
    )
    retention_s: float = Field(
        30 * 86400, gt=0, le=365 * 86400, description="How long a stored response is kept (OpenAI keeps 30 days)."
    )
    database: DatabaseConfig = Field(default_factory=DatabaseConfig, description="This replica's connection pool.")


class ResponseStore(MigratedStore):
    environment = "responses"

    def __init__(self, config: ResponsesConfig) -> None:
        super().__init__(config.store_url, config.database)
        self.retention_s = config.retention_s
        self._purged_at = 0.0

    def put(self, response_id: str, owner: str, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        now = time.time()
        with self.writing() as conn:
            conn.execute(
                sa.insert(RESPONSES).values(
                    id=response_id,
                    owner=owner,
                    created_at=now,
                    expires_at=now + self.retention_s,
                    response=response,
                    conversation=conversation,
                )
            )
        if now - self._purged_at >= PURGE_EVERY_S:
            self.purge(now)

    def get(self, response_id: str, owner: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The response and its conversation, while it lasts, for the key that made it (else None)."""
        if not RESPONSE_ID.fullmatch(response_id):  # nothing to look up (and PostgreSQL refuses NUL in text)
            return None
        t = RESPONSES
        query = sa.select(t.c.response, t.c.conversation).where(
            t.c.id == response_id, t.c.owner == owner, t.c.expires_at > time.time()
        )
        with self.reading() as conn:
            row = conn.execute(query).first()
        return (row.response, row.conversation) if row is not None else None

    def delete(self, response_id: str, owner: str) -> bool:
        if not RESPONSE_ID.fullmatch(response_id):
            return False
        with self.writing() as conn:
            gone = conn.execute(sa.delete(RESPONSES).where(RESPONSES.c.id == response_id, RESPONSES.c.owner == owner))
        return gone.rowcount == 1

    def purge(self, now: float | None = None) -> int:
        """Delete what has expired; how many."""
        now = now or time.time()
        with self.writing() as conn:
            gone = conn.execute(sa.delete(RESPONSES).where(RESPONSES.c.expires_at <= now))
        self._purged_at = now
        return int(gone.rowcount or 0)


RESPONSES = sa.Table(
    "responses",
    sa.MetaData(),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("conversation", sa.JSON, nullable=False),
)
