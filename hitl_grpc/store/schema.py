"""Alembic migrations driven from code: upgrade, and tell whether a schema is current."""

from __future__ import annotations

import enum
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaState(enum.Enum):
    """How a database's schema compares with this build's migrations."""

    EMPTY = "empty"
    CURRENT = "current"
    BEHIND = "behind"
    UNKNOWN = "unknown"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(conn: Connection) -> None:
    cfg = _config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _state(conn: Connection) -> SchemaState:
    current = set(MigrationContext.configure(conn).get_current_heads())
    script = ScriptDirectory.from_config(_config())
    heads = set(script.get_heads())
    if not current:
        return SchemaState.EMPTY
    if current == heads:
        return SchemaState.CURRENT
    known = {rev.revision for rev in script.walk_revisions()}
    return SchemaState.BEHIND if current <= known else SchemaState.UNKNOWN


async def upgrade(engine: AsyncEngine) -> None:
    """Applies every migration the database has not had yet."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def state(engine: AsyncEngine) -> SchemaState:
    """Reads the database's migration revision against this build's head."""
    async with engine.connect() as conn:
        return await conn.run_sync(_state)
