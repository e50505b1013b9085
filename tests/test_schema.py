"""The migrations build exactly the schema the code expects, and a foreign schema is refused."""

import shutil
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from hitl_grpc.config import Settings
from hitl_grpc.runtime.errors import StartupError
from hitl_grpc.runtime.server import open_store
from hitl_grpc.store import schema
from hitl_grpc.store.engine import make_engine
from hitl_grpc.store.tables import metadata


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = make_engine(database_url, timeout_s=5)
    try:
        assert await schema.state(engine) is schema.SchemaState.CURRENT
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_schema_of_an_unknown_revision_is_refused(database_url: str) -> None:
    engine = make_engine(database_url, timeout_s=5)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
        assert await schema.state(engine) is schema.SchemaState.UNKNOWN
    finally:
        await engine.dispose()
    with pytest.raises(StartupError, match="newer than this build"):
        await open_store(Settings.for_tests(database_url))


async def test_unreachable_database_is_a_startup_error() -> None:
    url = "postgresql://postgres@127.0.0.1:1/none"
    with pytest.raises(StartupError, match="cannot open database"):
        await open_store(Settings.for_tests(url, db_timeout_s=1))


async def test_schema_behind_the_build_is_refused_until_migrated(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build one migration ahead of the database: a copy of ours plus one more revision.
    newer = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS, newer)
    [head] = ScriptDirectory(str(schema.MIGRATIONS)).get_heads()
    (newer / "versions" / "9999_next.py").write_text(
        '"""next"""\n'
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n"
        f'revision = "9999"\ndown_revision = "{head}"\nbranch_labels = None\n'
        "depends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.create_table("next_table", sa.Column("id", sa.Integer, primary_key=True))\n'
    )
    monkeypatch.setattr(schema, "MIGRATIONS", newer)
    with pytest.raises(StartupError, match="behind this build"):
        await open_store(Settings.for_tests(database_url))
    engine = make_engine(database_url, timeout_s=5)
    try:
        await schema.upgrade(engine)
        assert await schema.state(engine) is schema.SchemaState.CURRENT
    finally:
        await engine.dispose()
