"""The services' stores on both SQL dialects they run on: SQLite (the local profile) and PostgreSQL (clusters).

Schema migrations (Alembic) on fresh databases and on a database made by the previous release; the catalog's
outbox; the recommender's lease and item registration under contention; a database that cannot be reached."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from deployments.errors import Conflict, Unavailable
from deployments.recommend import InteractionStore, ItemIn
from deployments.sql import current_revision, migrate, open_database, resolve_url
from graphs.catalog import ContentCatalog


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> str:
    """A fresh, empty database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    postgres = request.getfixturevalue("postgres")
    return postgres.create(f"{request.node.name[-40:].lower().replace('[', '_').replace(']', '').replace('-', '_')}")


def record(content_id: str, status: str = "complete") -> dict:
    return {"id": content_id, "status": status, "created_at": time.time(), "user_id": "u1", "topic": "t",
            "variants": {"article": {"experiment": "e", "variant": "control"}}}  # fmt: skip


def cid(n: int) -> str:
    return "c" + f"{n:032x}"


def test_migrations_bring_a_fresh_database_to_the_newest_revision(database_url: str) -> None:
    catalog = ContentCatalog(database_url)
    store = InteractionStore(database_url)  # two services' schemas side by side, each with its version table
    assert catalog.revision == "0003" and store.revision == "0002"
    tables = set(sa.inspect(catalog.database).get_table_names())
    assert {"content", "content_variants", "outbox", "interactions", "items", "leases"} <= tables
    assert {"alembic_version_catalog", "alembic_version_recommend"} <= tables
    assert migrate(catalog.database, "catalog") == "0003"  # running again changes nothing


def test_a_database_made_by_the_previous_release_is_upgraded_with_its_rows(database_url: str) -> None:
    """The previous release made its tables with create_all and no version table (and the oldest recommender
    stores had no item texts); its rows survive the upgrade."""
    engine = open_database(database_url)
    old = sa.MetaData()
    sa.Table("content", old, sa.Column("id", sa.String(40), primary_key=True),
             sa.Column("created_at", sa.Float, nullable=False), sa.Column("status", sa.String(16), nullable=False),
             sa.Column("user_id", sa.String(128)), sa.Column("record", sa.JSON, nullable=False))  # fmt: skip
    sa.Table("content_variants", old, sa.Column("content_id", sa.String(40), primary_key=True),
             sa.Column("stage", sa.String(32), primary_key=True), sa.Column("experiment", sa.String(128)),
             sa.Column("variant", sa.String(128)))  # fmt: skip
    sa.Table("items", old, sa.Column("item_id", sa.String(128), primary_key=True),
             sa.Column("title", sa.String(500)), sa.Column("created_at", sa.Float))  # fmt: skip
    sa.Table("interactions", old, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("user_id", sa.String(128)), sa.Column("item_id", sa.String(128)),
             sa.Column("event", sa.String(16)), sa.Column("weight", sa.Float),
             sa.Column("created_at", sa.Float))  # fmt: skip
    sa.Table("leases", old, sa.Column("name", sa.String(64), primary_key=True), sa.Column("holder", sa.String(64)),
             sa.Column("until", sa.Float))  # fmt: skip
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["content"].insert(), [{"id": cid(1), "created_at": 1.0, "status": "complete",
                                                       "user_id": "u1", "record": record(cid(1))}])  # fmt: skip
        conn.execute(old.tables["items"].insert(), [{"item_id": "old-item", "title": "Old", "created_at": 1.0}])
        conn.execute(old.tables["interactions"].insert(), [{"user_id": "u1", "item_id": "old-item", "event": "like",
                                                            "weight": 4.0, "created_at": 1.0}])  # fmt: skip
    engine.dispose()

    catalog, store = ContentCatalog(database_url), InteractionStore(database_url)
    assert catalog.revision == "0003" and store.revision == "0002"
    assert catalog.get(cid(1))["id"] == cid(1) and catalog.page(10, 0)[1] == 1
    assert store.item_texts() == {"old-item": "Old"}  # the text column was added, empty
    assert store.user_events("u1") == [("old-item", 4.0)]
    catalog.add(record(cid(2)), [("register_item", {"item_id": cid(2)})])
    assert catalog.outbox_state() == {"delivered": 0, "pending": 1}


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    errors: list[BaseException] = []
    revisions: list[str] = []

    def start() -> None:
        try:
            revisions.append(ContentCatalog(database_url).revision)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and revisions == ["0003"] * 4
    with open_database(database_url).connect() as conn:
        assert current_revision(conn, "catalog") == "0003"


def test_the_outbox_is_written_with_its_content_and_claimed_once(database_url: str) -> None:
    catalog = ContentCatalog(database_url)
    catalog.add(record(cid(3)), [("register_item", {"item_id": cid(3)})], claim_s=0.0)
    owed = catalog.add(record(cid(4)), [("register_item", {"item_id": cid(4)})], claim_s=60.0)  # its writer delivers it
    assert [(e.content_id, e.kind, e.attempts) for e in owed] == [(cid(4), "register_item", 0)]
    first = catalog.claim_due(10, claim_s=30)
    assert [e.content_id for e in first] == [cid(3)]
    assert catalog.claim_due(10, claim_s=30) == []  # claimed: another relay skips it
    catalog.failed(first[0], "recommender down", retry_in_s=0.0)
    again = catalog.claim_due(10, claim_s=30)
    assert [e.attempts for e in again] == [1]
    catalog.delivered([again[0].id])
    assert catalog.outbox_state(cid(3)) == {"delivered": 1, "pending": 0}
    assert catalog.outbox_state(cid(4)) == {"delivered": 0, "pending": 1}
    with pytest.raises(sa.exc.IntegrityError):  # the same content twice: nothing of the second is written
        catalog.add(record(cid(3)), [("register_item", {"item_id": cid(3)})])
    assert catalog.outbox_state() == {"delivered": 1, "pending": 1}


def test_one_lease_holder_at_a_time_under_contention(database_url: str) -> None:
    stores = [InteractionStore(database_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    won: list[str] = []

    def race(n: int) -> None:
        barrier.wait()
        if stores[n].try_lease("train", f"replica-{n}", 60):
            won.append(f"replica-{n}")

    threads = [threading.Thread(target=race, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and not stores[0].try_lease("train", "replica-late", 60)  # held: nobody else takes it
    stores[0].release_lease("train", won[0])
    assert stores[1].try_lease("train", "replica-1", 60)


def test_registering_the_same_items_at_once_stores_each_once(database_url: str) -> None:
    stores = [InteractionStore(database_url) for _ in range(3)]
    items = [ItemIn(item_id=f"item-{n}", title=f"T{n}", text="words") for n in range(20)]
    barrier = threading.Barrier(len(stores))
    added: list[int] = []

    def register(store: InteractionStore) -> None:
        barrier.wait()
        added.append(store.add_items(items))

    threads = [threading.Thread(target=register, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(added) == 20 and len(stores[0].item_texts()) == 20


def test_an_unreachable_database_is_unavailable_and_opens_when_it_is_back(tmp_path: Path) -> None:
    catalog = ContentCatalog("postgresql+psycopg://nobody@127.0.0.1:1/none")  # a replica starts all the same
    assert catalog.revision is None
    with pytest.raises(Unavailable, match="unavailable"):
        catalog.page(10, 0)
    store = InteractionStore("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(Unavailable) as err:
        store.add_items([ItemIn(item_id="x")])
    assert err.value.retry_after_s == 5


def test_urls_can_come_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CS_TEST_DB", f"sqlite:///{tmp_path}/x.db")
    assert resolve_url("env:CS_TEST_DB") == f"sqlite:///{tmp_path}/x.db"
    monkeypatch.delenv("CS_TEST_DB")
    with pytest.raises(ValueError, match="CS_TEST_DB"):
        resolve_url("env:CS_TEST_DB")


def test_a_content_stores_only_while_its_idempotency_key_stands_for_it(database_url: str) -> None:
    """The race the chaos test found: an attempt cancelled while it stored gives its key back, a resend claims the
    key for a new content; the first attempt's store, finishing late, must then write nothing."""
    catalog = ContentCatalog(database_url)
    assert catalog.claim_key("k-late", "fp", cid(7), lease_s=600)[0] == "new"
    catalog.release_key("k-late")  # the cancelled attempt gives the key back...
    assert catalog.claim_key("k-late", "fp", cid(8), lease_s=600) == ("new", cid(8), None)  # ...a resend takes it
    with pytest.raises(Conflict):  # ...and the first attempt's store comes too late: nothing of it is written
        catalog.add(record(cid(7)), [("register_item", {"item_id": cid(7)})], idempotency_key="k-late")
    catalog.add(record(cid(8)), [("register_item", {"item_id": cid(8)})], idempotency_key="k-late")
    assert catalog.get(cid(7)) is None and catalog.get(cid(8)) is not None
    assert catalog.page(10, 0)[1] == 1 and catalog.outbox_state() == {"delivered": 0, "pending": 1}
    assert catalog.claim_key("k-late", "fp", cid(9), lease_s=600)[:2] == ("done", cid(8))


def test_a_live_attempt_renews_its_key_and_a_dead_ones_claim_lapses(database_url: str) -> None:
    """The chaos test's second find: an attempt whose replica died while making a content held its key for the
    whole lease, so every resend got 409. Attempts renew a short lease while they run; a dead one's lapses."""
    catalog = ContentCatalog(database_url)
    assert catalog.claim_key("k-live", "fp", cid(1), lease_s=0.5)[0] == "new"
    assert catalog.renew_key("k-live", cid(1), lease_s=600)  # alive: a resend meanwhile is told to wait
    time.sleep(0.6)
    assert catalog.claim_key("k-live", "fp", cid(2), lease_s=600)[:2] == ("busy", cid(1))
    assert catalog.claim_key("k-dead", "fp", cid(3), lease_s=0.5)[0] == "new"  # then its replica dies: no renewal
    time.sleep(0.6)
    assert catalog.claim_key("k-dead", "fp", cid(4), lease_s=600) == ("new", cid(3), None)  # same content id
    catalog.release_key("k-live")
    assert not catalog.renew_key("k-live", cid(1), lease_s=600)  # given back: nothing left to renew
