"""The content pipeline's own data: a catalog of content records (SQLAlchemy) and an asset store (fsspec).

Defaults are embedded (a SQLite file and a local folder under the project root); a database URL and an object
store URL (``s3://``, ``gs://``, ``memory://``, ...) use the same code. Assets are written first and the record
last, in one transaction, so a record is never visible before its assets exist; a crash in between leaves at
most unreferenced asset files, never a half-written record.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from deployments.common import create_sql_engine, create_tables, project_root

CONTENT_ID = re.compile(r"^c[0-9a-f]{32}$")


ASSET_FILES = {"image": "image.png", "audio": "audio.wav"}


def asset_key(content_id: str, kind: str) -> str:
    """Where a content's asset lives in the store: one name per kind, chosen here, never by a request."""
    return f"{content_id}/{ASSET_FILES[kind]}"


def new_content_id() -> str:
    return "c" + uuid.uuid4().hex


class AssetStore:
    """Binary assets by key, in any fsspec filesystem; local writes are atomic (temp file + rename)."""

    KEY = re.compile(
        CONTENT_ID.pattern.removesuffix("$") + "/(" + "|".join(map(re.escape, ASSET_FILES.values())) + ")$"
    )

    def __init__(self, url: str) -> None:
        import fsspec

        if "://" not in url and not Path(url).is_absolute():
            url = str(project_root() / url)
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        # Keys are made by the pipeline, never taken from a request, and still checked: nothing outside the store.
        if not self.KEY.match(key):
            raise ValueError(f"invalid asset key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))


class ContentCatalog:
    """Content records in any SQLAlchemy database."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.engine = create_sql_engine(url)
        meta = sa.MetaData()
        self.table = sa.Table(
            "content",
            meta,
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("created_at", sa.Float, nullable=False, index=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("user_id", sa.String(128), nullable=True, index=True),
            sa.Column("record", sa.JSON, nullable=False),
        )
        self.variants = sa.Table(  # which experiment variant made which content: engagement per variant
            "content_variants",
            meta,
            sa.Column("content_id", sa.String(40), primary_key=True),
            sa.Column("stage", sa.String(32), primary_key=True),
            sa.Column("experiment", sa.String(128), nullable=False, index=True),
            sa.Column("variant", sa.String(128), nullable=False),
        )
        create_tables(meta, self.engine)

    def add(self, record: dict[str, Any]) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(self.table),
                {
                    "id": record["id"],
                    "created_at": record.get("created_at", time.time()),
                    "status": record["status"],
                    "user_id": record.get("user_id"),
                    "record": json.loads(json.dumps(record)),
                },
            )
            variants = [
                {"content_id": record["id"], "stage": stage, **tag} for stage, tag in record.get("variants", {}).items()
            ]
            if variants:
                conn.execute(sa.insert(self.variants), variants)

    def variant_contents(self) -> list[tuple[str, str, str]]:
        """(experiment, variant, content id) for every stored content an experiment variant helped make."""
        import sqlalchemy as sa

        t = self.variants
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.experiment, t.c.variant, t.c.content_id).distinct())
            return [(e, v, c) for e, v, c in rows]

    def update(self, record: dict[str, Any]) -> None:
        """Replace a stored record (its status and id stay as stored)."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.table)
                .where(self.table.c.id == record["id"])
                .values(status=record["status"], record=json.loads(json.dumps(record)))
            )

    def get(self, content_id: str) -> dict[str, Any] | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.scalar(sa.select(self.table.c.record).where(self.table.c.id == content_id))

    def page(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        import sqlalchemy as sa

        t = self.table
        with self.engine.connect() as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(t)) or 0
            query = sa.select(t.c.record).order_by(t.c.created_at.desc(), t.c.id).limit(limit).offset(offset)
            return list(conn.scalars(query)), int(total)
