"""The Responses API's store on both SQL dialects: kept for its key, for its retention, then purged."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge.response_store import ResponsesConfig, ResponseStore, new_response_id


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
    rid = new_response_id()
    store.put(rid, "user:ann", {"id": rid, "status": "completed"}, conversation)
    assert store.get(rid, "user:ann") == ({"id": rid, "status": "completed"}, conversation)
    assert store.get(rid, "user:ben") is None  # another key does not see it
    assert not store.delete(rid, "user:ben")
    assert store.delete(rid, "user:ann") and store.get(rid, "user:ann") is None


def test_an_id_this_store_never_issued_is_unknown_whatever_it_holds(store: ResponseStore) -> None:
    """Ids come from clients (``previous_response_id``, the path): one with a NUL, which PostgreSQL refuses in a
    query, is simply not found (schemathesis sent one)."""
    for foreign in ("resp_1", "\x00resp", "r\u00e9sp_" + "0" * 32, ""):
        assert store.get(foreign, "k") is None and store.delete(foreign, "k") is False


def test_an_expired_response_is_never_answered_and_is_purged(store: ResponseStore) -> None:
    old, new, gone = new_response_id(), new_response_id(), new_response_id()
    store.put(old, "k", {"id": old}, [])
    store.put(new, "k", {"id": new}, [])
    assert store.get(old, "k") is not None
    later = time.time() + 61  # past the retention of 60 s
    store.retention_s = 0.0  # what is written now expires at once
    store.put(gone, "k", {"id": gone}, [])
    assert store.get(gone, "k") is None
    assert store.purge(later) == 3
    assert store.get(new, "k") is None
