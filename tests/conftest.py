"""Every test gets a fresh database (SQLite file or PostgreSQL database) and its own server."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from hitl_grpc.store import schema
from hitl_grpc.store.engine import make_engine
from tests.harness import Harness, ServerFactory, server_factory

BACKENDS = ("sqlite", "postgres")
PG_ADMIN_URL = os.environ.get(
    "HITL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _migrate(url: str) -> None:
    async def run() -> None:
        engine = make_engine(url, timeout_s=10)
        try:
            await schema.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "hitl.db"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this worker, cloned for each test."""
    name = f"hitl_tmpl_{worker_id}_{os.getpid()}"
    try:
        with _pg_admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is mandatory on CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
    _migrate(_pg_url(name))
    yield name
    with _pg_admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store under test."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database of the test's backend, dropped afterwards."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "hitl.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    tmpl: str = request.getfixturevalue("pg_template")
    name = f"hitl_t_{uuid.uuid4().hex[:16]}"
    with _pg_admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(tmpl)
            )
        )
    yield _pg_url(name)
    with _pg_admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def make_server(database_url: str) -> ServerFactory:
    """Starts more servers (or one with other settings) on the test's database."""
    return server_factory(database_url)


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """The test's own server on 127.0.0.1:0 and a channel to it."""
    async with make_server() as harness:
        yield harness


@pytest.fixture(autouse=True)
async def no_task_outlives_its_server() -> AsyncIterator[None]:
    """Whatever a test's servers started (readers, sweepers, cleanups) has ended after it."""
    yield
    current = asyncio.current_task()
    leftover = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
    if leftover:
        _, pending = await asyncio.wait(leftover, timeout=5)
        for task in pending:
            task.cancel()
        assert not pending, f"tasks outlived the test: {[t.get_coro() for t in pending]}"
