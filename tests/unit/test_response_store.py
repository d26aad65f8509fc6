"""The Responses API's store on both SQL dialects: kept for its key, for its retention, then purged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.response_store import ResponsesConfig, ResponseStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> ResponseStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/responses.db"
    else:
        url = request.getfixturevalue("postgres").create(f"responses_{uuid_suffix()}")
    return ResponseStore(ResponsesConfig(store_url=url, retention_s=60))


def uuid_suffix() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def test_a_response_is_kept_for_its_key_and_deleted(store: ResponseStore) -> None:
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    store.put("resp_1", "user:ann", {"id": "resp_1", "status": "completed"}, conversation)
    assert store.get("resp_1", "user:ann") == ({"id": "resp_1", "status": "completed"}, conversation)
    assert store.get("resp_1", "user:ben") is None  # another key does not see it
    assert not store.delete("resp_1", "user:ben")
    assert store.delete("resp_1", "user:ann") and store.get("resp_1", "user:ann") is None


def test_an_expired_response_is_never_answered_and_is_purged(store: ResponseStore) -> None:
    store.put("resp_old", "k", {"id": "resp_old"}, [])
    store.put("resp_new", "k", {"id": "resp_new"}, [])
    assert store.get("resp_old", "k") is not None
    later = time.time() + 61  # past the retention of 60 s
    store.retention_s = 0.0  # what is written now expires at once
    store.put("resp_gone", "k", {"id": "resp_gone"}, [])
    assert store.get("resp_gone", "k") is None
    assert store.purge(later) == 3
    assert store.get("resp_new", "k") is None
