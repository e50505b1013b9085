"""Migration 0004 (leases and per-action verdicts): down and up again on both backends, and
rows written before it, which have no verdicts, judged under the current rules."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hitl.v1 import decision_pb2
from sqlalchemy import Connection, inspect, text

from hitl_grpc.domain.values import Role
from hitl_grpc.store import schema
from hitl_grpc.store.engine import make_engine
from hitl_grpc.store.tables import metadata
from tests.decisions_support import submit
from tests.harness import ServerFactory

KILL = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="dc-1")


def _to(revision: str, down: bool) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = schema._config()
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    return run


def _diff(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_0004_goes_down_and_up_again(database_url: str) -> None:
    engine = make_engine(database_url, timeout_s=10)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to("0003", down=True))
            columns = await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("decisions")}
            )
            assert not {"lease_id", "lease_epoch", "action_verdicts"} & columns
        await schema.upgrade(engine)
        assert await schema.state(engine) is schema.SchemaState.CURRENT
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_a_decision_from_before_0004_is_judged_under_the_current_rules(
    make_server: ServerFactory,
) -> None:
    async with make_server(step_up_actions=frozenset()) as server:
        service = await server.as_role(Role.SERVICE)
        ana = await server.as_role(Role.ANALYST)
        submitted = await submit(server, service, recommended_actions=[KILL])
        async with server.running.engine.begin() as conn:
            # What a row written before the migration holds: no verdicts, epoch 0.
            await conn.execute(text("UPDATE decisions SET action_verdicts = NULL, lease_epoch = 0"))
        legacy = await server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=ana,
            timeout=10,
        )
        assert list(legacy.decision.action_verdicts) == []
        partial = await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=submitted.analysis_id,
                status=decision_pb2.DECISION_STATUS_APPROVED,
                approved_actions=[KILL],
            ),
            metadata=ana,
            timeout=10,
        )
        [kill] = partial.decision.action_verdicts
        assert kill.required_approvals == 2
        assert partial.decision.status == decision_pb2.DECISION_STATUS_PENDING
