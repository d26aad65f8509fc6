"""Fixtures shared by every test tier: offline mode and the tiny models, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away project root holding this session's tiny models and data (``$CONTENT_STUDIO_ROOT``)."""
    from offline.tiny_models import ensure_tiny_models

    root = tmp_path_factory.mktemp("content-studio-root")
    ensure_tiny_models(root / ".cache" / "models" / "tiny")
    return root


@pytest.fixture(scope="session")
def tiny_models(project_root: Path) -> Path:
    """The folder with the tiny ``text``, ``image``, ``voice`` and ``recommend`` models."""
    return project_root / ".cache" / "models" / "tiny"


# --- real servers: PostgreSQL and Redis, as this project's machines run them ----------------------------------
POSTGRES_ADMIN_URL = os.environ.get(
    "CONTENT_STUDIO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CONTENT_STUDIO_TEST_REDIS", "redis://127.0.0.1:6379/0")


def postgres_reachable() -> str | None:
    """None when the test PostgreSQL answers, else why not (the tests that need it skip with that message)."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # no server, no driver: say what is missing
        return f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL.split('@')[-1]}: {type(exc).__name__}"


def redis_reachable() -> str | None:
    """None when the machine's Redis answers, else why not."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
        return None
    except Exception as exc:
        return f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}"


class PostgresDatabases:
    """Fresh databases on the machine's PostgreSQL, named per test session, dropped at the end."""

    def __init__(self) -> None:
        import uuid

        import sqlalchemy as sa

        self.prefix = f"cs_{uuid.uuid4().hex[:8]}"
        self.admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.made: list[str] = []

    def create(self, name: str) -> str:
        import sqlalchemy as sa

        database = f"{self.prefix}_{name}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        self.made.append(database)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"

    def drop_all(self) -> None:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            for database in self.made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    why = postgres_reachable()
    if why:
        pytest.skip(why)
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()
