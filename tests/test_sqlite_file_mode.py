"""The SQLite file holds TOTP seeds and password hashes: only its owner may read it."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from hitl_grpc.store.engine import make_engine


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default umask, under which SQLite alone would create 0644 files."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("permissive_umask")
async def test_a_new_database_and_its_wal_are_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "hitl.db"
    engine = make_engine(f"sqlite:///{database}", timeout_s=5)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
        created = [database, tmp_path / "hitl.db-wal", tmp_path / "hitl.db-shm"]
        assert all(path.exists() for path in created)
        assert {path.name: _mode(path) for path in created} == {
            path.name: 0o600 for path in created
        }
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("permissive_umask")
async def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    database = tmp_path / "hitl.db"
    database.touch(mode=0o640)
    database.chmod(0o640)
    engine = make_engine(f"sqlite:///{database}", timeout_s=5)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    assert _mode(database) == 0o640


def test_a_missing_directory_is_left_for_sqlite_to_report(tmp_path: Path) -> None:
    make_engine(f"sqlite:///{tmp_path / 'absent' / 'hitl.db'}", timeout_s=5)
    assert not (tmp_path / "absent").exists()
