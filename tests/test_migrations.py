"""`flask db upgrade` builds the schema from empty on SQLite and on PostgreSQL, the models match the
migrations exactly, and downgrade takes it back to empty."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"users", "broker_accounts", "strategies", "order_logs", "audit_events", "alembic_version"}
PG_ADMIN_URL = os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def flask_db(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "FLASK_APP": "wsgi", "REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run([sys.executable, "-m", "flask", "db", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def upgrade_check_downgrade(database_url: str) -> None:
    result = flask_db(database_url, "upgrade")
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(database_url)
    try:
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        check = flask_db(database_url, "check")
        assert check.returncode == 0 and "No new upgrade operations" in check.stdout + check.stderr, check.stderr
        assert flask_db(database_url, "upgrade").returncode == 0  # idempotent
        down = flask_db(database_url, "downgrade", "base")
        assert down.returncode == 0, down.stderr
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_on_empty_sqlite(tmp_path):
    upgrade_check_downgrade(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")


@pytest.fixture
def pg_database():  # type: ignore[no-untyped-def]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise  # CI machines run PostgreSQL: its absence there is a failure, not a skip
        pytest.skip(f"no PostgreSQL at {PG_ADMIN_URL}: {exc}")
    name = f"algo_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_migrations_on_empty_postgresql(pg_database):
    upgrade_check_downgrade(pg_database)
