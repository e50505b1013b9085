"""Upgrading a database whose event log was written in the old (txid, position) order."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect

from hitl_grpc.store import schema
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.door import Door
from hitl_grpc.store.engine import make_engine
from hitl_grpc.store.outbox import EventStore
from hitl_grpc.store.tables import decision_events
from tests.watching import hand_decision


def _migrate(step: Callable[..., None], revision: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(schema.MIGRATIONS))
        cfg.attributes["connection"] = conn
        step(cfg, revision)

    return run


def _event_columns(conn: Connection) -> list[str]:
    return [column["name"] for column in inspect(conn).get_columns("decision_events")]


async def test_events_written_before_the_upgrade_stay_readable_with_their_size(
    database_url: str,
) -> None:
    engine = make_engine(database_url, timeout_s=10)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate(command.downgrade, "0001"))
            assert "txid" in await conn.run_sync(_event_columns)
            decision = hand_decision("written-by-the-old-build")
            # Only the columns both schemas share: the old build's txid stays NULL.
            await conn.execute(
                decision_events.insert().values(
                    analysis_id=decision.analysis_id,
                    kind="added",
                    status=int(decision.status),
                    priority=int(decision.analysis.priority),
                    version=decision.version,
                    time=decision.updated_at,
                    payload=row_to_payload(decision_to_row(decision)),
                )
            )
        async with engine.begin() as conn:
            await conn.run_sync(_migrate(command.upgrade, "head"))
            assert "txid" not in await conn.run_sync(_event_columns)
        assert await schema.state(engine) is schema.SchemaState.CURRENT

        events, more = await EventStore(Door(engine, timeout_s=10)).read_new(0, 10, 1 << 20)
        assert [e.analysis_id for e in events] == ["written-by-the-old-build"]
        assert not more
        assert events[0].size > 100  # filled in from the stored JSON
    finally:
        await engine.dispose()
