"""A database made by an earlier version upgrades in place, with its data, on both engines."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.store import Store
from omniflash.store.db import Database
from omniflash.store.schema import MIGRATIONS, schema_version

PG_ENV = "OMNIFLASH_TEST_POSTGRES_URL"


@contextlib.contextmanager
def _fresh_url(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / (name + '.db')}"
        return
    base = os.environ[PG_ENV]
    admin = sa.create_engine(
        base.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    db_name = f"omniflash_{name}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{db_name}"')
    try:
        yield base.rsplit("/", 1)[0] + "/" + db_name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not os.environ.get(PG_ENV):
        pytest.skip(f"PostgreSQL tests need {PG_ENV}=postgresql://user@host:port/db")
    return str(request.param)


def _migrate_to(db: Database, version: int) -> None:
    with db.write() as conn:
        schema_version.create(conn)
        for number, _name, apply in MIGRATIONS:
            if number <= version:
                apply(conn)
                conn.execute(schema_version.insert().values(version=number, applied_at=0.0))


def _columns(db: Database, table: str) -> dict[str, bool]:
    return {c["name"]: c["nullable"] for c in sa.inspect(db.engine).get_columns(table)}


def _indexes(db: Database, table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(db.engine).get_indexes(table)}


def test_version_3_upgrades_with_its_keys_tasks_and_counts(kind: str, tmp_path: Path) -> None:
    with _fresh_url(kind, tmp_path, "v3") as old_url, _fresh_url(kind, tmp_path, "new") as new_url:
        old = Database(old_url)
        _migrate_to(old, 3)
        spec = parse_generation_request({"prompt": "p", "model": "Omni-Flash-Ext"}).to_json()
        with old.write() as conn:
            for key_id in (1, 2):
                conn.execute(
                    sa.text(
                        "INSERT INTO api_keys (id, prefix, key_hash, name, balance, rpm, "
                        "max_concurrent, created_at) VALUES (:id, 'of_x', :h, 'k', 0, 5, 9, 0)"
                    ),
                    {"id": key_id, "h": f"hash{key_id}"},
                )
            statuses = ["pending", "processing", "completed", "failed", "cancelled", "pending"]
            for n, status in enumerate(statuses):
                conn.execute(
                    sa.text(
                        "INSERT INTO tasks (id, key_id, status, progress, spec, seed, credits, "
                        "estimated_time, created_at, result_deleted, attempts, lease_epoch) "
                        "VALUES (:id, :key, :status, 0, :spec, 1, 0, 3, 0, false, 0, 0)"
                    ),
                    {"id": f"task_{n:02d}", "key": 1 + n // 5, "status": status, "spec": spec},
                )
            conn.execute(sa.text("INSERT INTO rate_windows VALUES (1, 1, 3)"))
        assert old.migrate() == MIGRATIONS[-1][0]
        with old.read() as conn:
            counts = dict(conn.execute(sa.text("SELECT id, in_flight FROM api_keys")).all())
        assert counts == {1: 2, 2: 1}
        tables = set(sa.inspect(old.engine).get_table_names())
        assert "rate_windows" not in tables
        assert "ix_tasks_key_id" in _indexes(old, "tasks")
        assert "ix_tasks_active" not in _indexes(old, "tasks")

        # The upgraded schema is the one a new database gets.
        new = Database(new_url)
        new.migrate()
        for table in ("api_keys", "tasks"):
            assert _columns(old, table) == _columns(new, table)
            assert _indexes(old, table) == _indexes(new, table)
        new.dispose()
        old.dispose()

        # The store runs on it: a submit counts itself and its task.
        store = Store(old_url)
        key = store.keys.get(1)
        task = store.tasks.submit(
            key,
            parse_generation_request({"prompt": "p", "model": "Omni-Flash-Ext"}),
            millicredits=0,
            estimated_time=1,
            seed=1,
            now=time.time(),
        ).task
        with store.db.read() as conn:
            row = conn.execute(
                sa.text("SELECT in_flight, rate_hits FROM api_keys WHERE id = 1")
            ).one()
        assert (row.in_flight, row.rate_hits) == (3, 1)
        assert store.tasks.get(task.id).key_id == 1
        store.close()
