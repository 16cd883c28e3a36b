"""SQLAlchemyStore, row mode: dicts and ORM instances as rows, with database-generated fields merged back.

Every test runs on SQLite, PostgreSQL and MariaDB; those that go through a cache also run on each core.
"""

from __future__ import annotations

import datetime
import itertools
import threading
import uuid
from typing import Optional

import pytest
import sqlalchemy as sa
from helpers import TIMEOUT
from services import HeldStore, database, db_cache  # noqa: F401  (fixtures)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from lazycache.serializers import SerializationError
from lazycache.stores.sqlalchemy import SQLAlchemyStore


def people_table(database, metadata=None) -> sa.Table:
    """A table like the origin's GORM model: a generated integer id, a unique name used as the cache key."""
    name = database.table_name("people")
    return sa.Table(
        name,
        metadata or sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("email", sa.String(100)),
        # An SQL onupdate (bumped by every update), qualified: in an upsert it means the existing row.
        sa.Column(
            "revision",
            sa.Integer,
            nullable=False,
            server_default="0",
            onupdate=sa.literal_column(f"{name}.revision") + 1,
        ),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )


def person_class(database) -> type:
    """An ORM-mapped class over a fresh table, with a db-generated id and a unique name."""

    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = database.table_name("person")
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100), unique=True)
        # Optional, not "str | None": SQLAlchemy evaluates the annotation, which Python 3.9 cannot.
        email: Mapped[Optional[str]] = mapped_column(sa.String(100))  # noqa: UP045
        created_at: Mapped[datetime.datetime] = mapped_column(server_default=sa.func.now())

        def __repr__(self) -> str:
            return f"Person(id={self.id!r}, name={self.name!r}, email={self.email!r})"

    return Person


def rows(database, table: sa.Table) -> dict:
    """name -> row dict, read with a separate connection."""
    with database.engine.connect() as conn:
        return {row.name: dict(row._mapping) for row in conn.execute(sa.select(table))}


# ----------------------------------------------------------------------------- dicts


def test_dict_rows_get_the_generated_id_and_server_defaults_merged(database, db_cache) -> None:
    table = people_table(database)
    store = SQLAlchemyStore(database.engine, table, key="name")
    cache = db_cache(store, quiet=True)
    cache["alice"] = {"email": "alice@example.com"}  # the name comes from the key
    cache["bob"] = {"name": "bob", "email": None}
    cache.flush()
    in_db = rows(database, table)
    assert set(in_db) == {"alice", "bob"}
    alice = cache["alice"]
    assert alice["id"] == in_db["alice"]["id"] and isinstance(alice["id"], int)
    assert alice["created_at"] == in_db["alice"]["created_at"] and isinstance(
        alice["created_at"], datetime.datetime
    )
    assert alice["revision"] == 0
    assert cache["bob"]["id"] == in_db["bob"]["id"] != alice["id"]
    assert cache.pending == 0  # merging is not a change to write back

    cache["alice"] = {**alice, "email": "new@example.com"}  # an update: same row, revision bumped
    cache.flush()
    assert cache["alice"]["revision"] == 1
    in_db = rows(database, table)
    assert in_db["alice"]["id"] == alice["id"] and in_db["alice"]["email"] == "new@example.com"
    assert len(in_db) == 2


def test_a_newer_value_set_during_the_write_keeps_its_fields_gets_the_id_and_is_written_next(
    database, db_cache
) -> None:
    table = people_table(database)
    store = HeldStore(database.engine, table, key="name")
    cache = db_cache(store, quiet=True)
    cache["carol"] = {"email": "old@example.com"}
    store.holding = True
    flusher = threading.Thread(target=cache.flush, daemon=True)
    flusher.start()
    assert store.entered.wait(TIMEOUT)
    cache["carol"] = {
        "email": "new@example.com",
        "revision": 41,
    }  # changed while the old value is written
    store.release.set()
    flusher.join(TIMEOUT)
    carol = cache["carol"]
    assert carol["email"] == "new@example.com"
    assert carol["revision"] == 41  # not overwritten by the revision the database returned
    assert isinstance(carol["id"], int)  # but the id it lacked is merged in
    assert rows(database, table)["carol"]["email"] == "old@example.com"
    assert cache.pending == 1
    cache.flush()
    in_db = rows(database, table)
    assert (
        len(in_db) == 1
        and in_db["carol"]["email"] == "new@example.com"
        and in_db["carol"]["id"] == carol["id"]
    )


def test_deletes_and_upserts_of_rows_share_one_transaction(database, db_cache) -> None:
    table = people_table(database)
    cache = db_cache(
        SQLAlchemyStore(database.engine, table, key="name", chunk_size=7),
        quiet=True,
        batch_size=500,
    )
    cache.update({f"p{i}": {"email": f"{i}@example.com"} for i in range(40)})
    cache.flush()
    for i in range(0, 40, 2):
        del cache[f"p{i}"]
    cache["p1"] = {**cache["p1"], "email": "changed"}
    cache["p100"] = {}
    result = cache.flush()
    assert (result.written, result.deleted, result.batches) == (2, 20, 1)
    in_db = rows(database, table)
    assert sorted(in_db) == sorted([f"p{i}" for i in range(1, 40, 2)] + ["p100"])
    assert in_db["p1"]["email"] == "changed"


@pytest.mark.parametrize(
    "returning",
    [pytest.param(None, id="returning-if-available"), pytest.param(False, id="select-after")],
)
def test_generated_fields_come_back_with_or_without_returning(database, returning) -> None:
    table = people_table(database)
    store = SQLAlchemyStore(database.engine, table, key="name", returning=returning)
    generated = store.write([("a", {"email": "a"}), ("b", {})], [])
    in_db = rows(database, table)
    assert generated == {
        name: {"id": in_db[name]["id"], "revision": 0, "created_at": in_db[name]["created_at"]}
        for name in ("a", "b")
    }
    again = store.write([("a", {"email": "a2"})], [])
    assert again["a"]["id"] == in_db["a"]["id"] and again["a"]["revision"] == 1


def test_python_side_defaults_and_onupdate_callables_are_applied_and_returned(database) -> None:
    revisions = itertools.count(100)
    table = sa.Table(
        database.table_name("docs"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("source", sa.String(20), default="lazycache"),
        sa.Column("touched", sa.Integer, default=0, onupdate=lambda: next(revisions)),
    )
    store = SQLAlchemyStore(database.engine, table, key="name")
    first = store.write([("a", {}), ("b", {"source": "mine"})], [])
    assert {k: (v["source"], v["touched"]) for k, v in first.items()} == {
        "a": ("lazycache", 0),
        "b": ("mine", 0),
    }
    second = store.write(
        [("a", {"touched": 5, "source": "theirs"})], []
    )  # an update: onupdate wins
    assert (
        second["a"]["source"] == "theirs" and second["a"]["touched"] >= 100
    )  # a value of the callable, not 5
    assert second["a"]["id"] == first["a"]["id"]


def test_composite_keys_of_several_types(database, db_cache) -> None:
    table = sa.Table(
        database.table_name("events"),
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.Uuid, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("note", sa.Text),
        sa.UniqueConstraint("tenant", "day", "slot"),
    )
    store = SQLAlchemyStore(database.engine, table, key=("tenant", "day", "slot"))
    cache = db_cache(store, quiet=True)
    tenant = uuid.uuid4()
    day = datetime.date(2024, 2, 29)
    keys = [(tenant, day, slot) for slot in range(5)]
    for key in keys:
        cache[key] = {"note": f"slot {key[2]}"}
    cache.flush()
    assert all(isinstance(cache[key]["id"], int) for key in keys)
    del cache[keys[0]]
    cache.flush()
    fresh = SQLAlchemyStore(database.new_engine(), table, key=("tenant", "day", "slot"))
    loaded = fresh.load_many([*keys, (uuid.uuid4(), day, 1)])
    assert sorted(loaded) == sorted(keys[1:])
    assert loaded[keys[3]]["note"] == "slot 3" and loaded[keys[3]]["id"] == cache[keys[3]]["id"]


# ----------------------------------------------------------------------------- ORM instances


def test_orm_instances_get_their_generated_id_and_load_detached(database, db_cache) -> None:
    Person = person_class(database)
    store = SQLAlchemyStore(database.engine, Person, key="name")
    cache = db_cache(store, quiet=True)
    alice = Person(name="alice", email="alice@example.com")
    cache["alice"] = alice
    cache["bob"] = Person(email="bob@example.com")  # the name comes from the key
    cache.flush()
    assert cache["alice"] is alice
    assert isinstance(alice.id, int) and isinstance(alice.created_at, datetime.datetime)

    fresh = db_cache(SQLAlchemyStore(database.new_engine(), Person, key="name"), quiet=True)
    loaded = fresh["alice"]
    assert isinstance(loaded, Person) and sa.inspect(loaded).detached
    assert (loaded.id, loaded.name, loaded.email, loaded.created_at) == (
        alice.id,
        "alice",
        alice.email,
        alice.created_at,
    )
    assert fresh["bob"].name == "bob" and fresh["bob"].id != alice.id

    loaded.email = "changed@example.com"  # update through the cache: the same row
    fresh["alice"] = loaded
    fresh.flush()
    with Session(database.engine) as session:  # and the instance works with a session of the user's
        people = session.scalars(sa.select(Person).order_by(Person.id)).all()
        assert [(p.id, p.name, p.email) for p in people] == [
            (alice.id, "alice", "changed@example.com"),
            (fresh["bob"].id, "bob", "bob@example.com"),
        ]
        merged = session.merge(loaded)
        assert merged.id == alice.id


def test_orm_instance_changed_during_the_write_keeps_its_changes(database, db_cache) -> None:
    Person = person_class(database)
    store = HeldStore(database.engine, Person, key="name")
    cache = db_cache(store, quiet=True)
    cache["dave"] = Person(email="old@example.com")
    store.holding = True
    flusher = threading.Thread(target=cache.flush, daemon=True)
    flusher.start()
    assert store.entered.wait(TIMEOUT)
    newer = Person(email="new@example.com")
    cache["dave"] = newer
    store.release.set()
    flusher.join(TIMEOUT)
    assert cache["dave"] is newer and newer.email == "new@example.com" and isinstance(newer.id, int)
    cache.flush()
    with database.engine.connect() as conn:
        assert conn.execute(sa.select(Person.id, Person.email)).all() == [
            (newer.id, "new@example.com")
        ]


def test_orm_read_through_of_rows_written_by_someone_else(database, db_cache) -> None:
    Person = person_class(database)
    store = SQLAlchemyStore(database.engine, Person, key="name")
    with Session(database.engine) as session, session.begin():
        session.add_all([Person(name="erin", email="erin@example.com"), Person(name="frank")])
    cache = db_cache(store, quiet=True)
    erin = cache["erin"]
    assert isinstance(erin, Person) and erin.email == "erin@example.com" and erin.id is not None
    assert "nobody" not in cache
    assert cache.get("frank").email is None


# ----------------------------------------------------------------------------- refused values and tables


def test_value_that_is_not_a_row_is_rejected_naming_its_key(database) -> None:
    table = people_table(database)
    store = SQLAlchemyStore(database.engine, table, key="name")
    store.write([("ok", {})], [])
    cases = [
        ("contradicts", {"name": "someone else"}, "contradicts its key"),
        ("unknown", {"nickname": "x"}, "not columns"),
        ("wrong-type", ["a", "list"], "expected a dict"),
    ]
    for key, value, message in cases:
        with pytest.raises(SerializationError, match=message) as caught:
            store.write([("ok", {"email": "changed"}), (key, value)], ["ok"])
        assert caught.value.key == key
        assert store.is_recoverable(caught.value) is False
    assert rows(database, table)["ok"]["email"] is None  # nothing of those batches was written


def test_key_columns_must_be_unique(database) -> None:
    table = people_table(database)
    with pytest.raises(ValueError, match="not declared unique"):
        SQLAlchemyStore(database.engine, table, key="email")
    with pytest.raises(ValueError, match="not columns"):
        SQLAlchemyStore(database.engine, table, key="nope")
