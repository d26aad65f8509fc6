"""SQL for the services that own a database (the pipeline's catalog, the recommender's store).

- URLs may name an environment variable instead of a secret: ``env:CONTENT_STUDIO_CATALOG_URL``, so credentials
  come from a Kubernetes Secret (or the shell), never from the Serve config in clear.
- Each replica has its own connection pool, sized in its config (``DatabaseConfig``); connections are checked
  before use, so a database that dropped them is reconnected to by itself when it is back.
- ``migrate`` brings a database to its newest schema with Alembic (versioned scripts under ``migrations/``),
  under a database-wide lock, so replicas that start together migrate once.
- A database that cannot be reached is ``Unavailable`` (the routes that need it answer 503 with
  ``Retry-After``), never a 500.

SQLite stays the embedded default of the local profile; PostgreSQL is what clusters use, and what the
integration tests run on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from deployments.common import StrictModel, project_path
from deployments.errors import Unavailable

logger = logging.getLogger("content_studio.sql")
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
ENV_PREFIX = "env:"


class DatabaseConfig(StrictModel):
    """A replica's connection pool (per replica: the database sees replicas x (pool_size + max_overflow))."""

    pool_size: int = Field(5, ge=1, le=200, description="Connections kept open by each replica.")
    max_overflow: int = Field(5, ge=0, le=200, description="Extra connections a replica may open under load.")
    pool_timeout_s: float = Field(
        5.0, gt=0, le=120, description="How long a request waits for a free connection before it fails (503)."
    )
    connect_timeout_s: int = Field(5, ge=1, le=120, description="How long connecting to the database may take.")
    retry_after_s: int = Field(5, ge=1, le=600, description="`Retry-After` when the database is unreachable.")


def resolve_url(url: str) -> str:
    """A database URL, read from the environment when written ``env:NAME``; relative SQLite paths are anchored at
    the project root (like model folders), and their folder is made."""
    if url.startswith(ENV_PREFIX):
        name = url[len(ENV_PREFIX) :]
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"the database URL comes from ${name}, which is not set")
        url = value
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url in ("sqlite:///:memory:", "sqlite://"):
        return url
    path = project_path(url[len(prefix) :])
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def open_database(url: str, pool: DatabaseConfig | None = None) -> Any:
    """The database as this replica reaches it (SQLAlchemy's engine, with this replica's pool); SQLite gets WAL
    mode so readers never block a writer."""
    import sqlalchemy as sa

    pool = pool or DatabaseConfig()
    resolved = resolve_url(url)
    if resolved.startswith("sqlite"):
        sqlite = sa.create_engine(resolved, connect_args={"timeout": 30})

        @sa.event.listens_for(sqlite, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")

        return sqlite
    return sa.create_engine(
        resolved,
        pool_size=pool.pool_size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.pool_timeout_s,
        pool_pre_ping=True,  # a connection the server dropped is replaced before use
        pool_recycle=1800,
        connect_args={"connect_timeout": pool.connect_timeout_s},
    )


def is_connection_error(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (as opposed to a bad statement)."""
    import sqlalchemy as sa

    if isinstance(exc, sa.exc.TimeoutError):  # no free connection in the pool
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)
    return False


@contextlib.contextmanager
def unavailable_as(retry_after_s: float = 5.0) -> Iterator[None]:
    """Turn a lost or unreachable database into ``Unavailable`` (503 + Retry-After at the edge)."""
    try:
        yield
    except Exception as exc:
        if is_connection_error(exc):
            detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
            raise Unavailable(f"the database is unavailable: {detail}", retry_after_s=retry_after_s) from None
        raise


def _while_locked(work: Any, wait_s: float = 60.0) -> Any:
    """Run ``work()``, waiting out a SQLite database that another process holds ("database is locked": replicas
    starting together; switching to WAL takes the lock without waiting for it). That is contention, not an
    outage: a locked database is never taken for one that is down."""
    import sqlalchemy as sa

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return work()
        except sa.exc.OperationalError as exc:
            if "database is locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# --- migrations -------------------------------------------------------------------------------------------
class MigratedStore:
    """A service's own database: its connection pool, the schema migrated on first use (a database down at
    start does not stop the replica), and every operation's loss of the database turned into ``Unavailable``.
    Subclasses name their Alembic environment (``migrations/<environment>``)."""

    environment: ClassVar[str]

    def __init__(self, url: str, pool: DatabaseConfig | None = None) -> None:
        self.pool = pool or DatabaseConfig()
        self.database = open_database(url, self.pool)  # SQLAlchemy's engine: connections and their pool
        self.revision: str | None = None
        self._migrating = threading.Lock()
        with contextlib.suppress(Unavailable):  # down at start: the replica serves, migrates on first use
            self._ready()

    def _ready(self) -> None:
        if self.revision is None:
            with self._migrating, unavailable_as(self.pool.retry_after_s):
                if self.revision is None:
                    self.revision = _while_locked(lambda: migrate(self.database, self.environment))

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Every operation: the schema is current (migrated on first use), a lost database is ``Unavailable``."""
        self._ready()
        with unavailable_as(self.pool.retry_after_s):
            yield

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection for reads (the schema current, a lost database ``Unavailable``)."""
        with self._unavailable(), self.database.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def writing(self) -> Iterator[Any]:
        """A transaction: committed when the block ends, rolled back when it raises."""
        with self._unavailable(), self.database.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.database.dispose()


def migrate(database: Any, store: str, lock_path: Path | None = None) -> str:
    """Upgrade ``database`` to the newest revision of ``migrations/<store>`` and return it.

    One replica migrates at a time: PostgreSQL through an advisory lock held by the migrating connection, SQLite
    through a lock file beside the database. A replica that waited finds the database current and does nothing.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS / store))
    config.set_main_option("version_table", f"alembic_version_{store}")
    with database.connect() as conn, _migration_lock(database, conn, store, lock_path):
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
        return current_revision(conn, store)


def run_alembic_environment() -> None:
    """The body of every store's Alembic ``env.py``: migrations run on the connection the service hands over
    (:func:`migrate`), or on ``sqlalchemy.url`` / ``$CONTENT_STUDIO_DATABASE_URL`` when run by hand."""
    import os

    import sqlalchemy as sa
    from alembic import context

    config = context.config

    def run(connection: sa.engine.Connection) -> None:
        context.configure(
            connection=connection, target_metadata=None, version_table=config.get_main_option("version_table")
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ["CONTENT_STUDIO_DATABASE_URL"]
    with sa.create_engine(url).connect() as own:
        run(own)
        own.commit()


def current_revision(conn: Any, store: str) -> str:
    import sqlalchemy as sa

    table = f"alembic_version_{store}"
    if not sa.inspect(conn).has_table(table):
        return "none"
    return str(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalar() or "none")


@contextlib.contextmanager
def _migration_lock(database: Any, conn: Any, store: str, lock_path: Path | None) -> Iterator[None]:
    import hashlib

    import sqlalchemy as sa

    if database.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"content-studio:{store}".encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            conn.commit()
        return
    filename = database.url.database
    path = lock_path or (Path(filename + f".{store}.migrate.lock") if filename else None)
    if path is None:  # an in-memory SQLite database has one connection: nothing to race with
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
