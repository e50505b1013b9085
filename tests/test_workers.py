"""Several serving processes' parts, in process: the held port, workers sharing it, the
bootstrap admin made once, and the event reader's batched wake-ups."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Final

import grpc
import pytest
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2

from hitl_grpc.config import Settings
from hitl_grpc.domain.values import Role
from hitl_grpc.runtime.errors import StartupError
from hitl_grpc.runtime.server import prepare_store, running_server
from hitl_grpc.runtime.workers import hold
from tests.harness import ServerFactory, bearer
from tests.watching import event_of, hub_of, submit_request, take, until_live

COMMITS: Final = 40
LINGER_S: Final = 0.5
CONNECTIONS: Final = 20
# No catch-up timer and no pruner: every read is one a wake-up asked for.
QUIET: Final = {"watch_catchup_s": 3600, "sweep_interval_s": 3600}


async def test_a_burst_of_commits_costs_a_few_reads_and_each_event_arrives_once(
    make_server: ServerFactory, backend: str
) -> None:
    await _burst(make_server, across=False)


# SQLite has no NOTIFY: another process's commits reach its reader by the catch-up timer.
@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_burst_of_another_servers_commits_costs_a_few_reads_and_arrives_once(
    make_server: ServerFactory, backend: str
) -> None:
    await _burst(make_server, across=True)


async def _burst(make_server: ServerFactory, *, across: bool) -> None:
    """COMMITS concurrent submits, here or on another server, watched on this one."""
    async with AsyncExitStack() as stack:
        watcher = await stack.enter_async_context(make_server(wake_linger=LINGER_S, **QUIET))
        submitter = await stack.enter_async_context(make_server(**QUIET)) if across else watcher
        analyst = await watcher.as_role(Role.ANALYST)
        candi = await submitter.as_role(Role.SERVICE)
        stream = aiter(
            watcher.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
        )
        await until_live(stream)
        hub = hub_of(watcher)
        await hub.sync()
        before = hub.reads
        started = time.monotonic()
        requests = [submit_request() for _ in range(COMMITS)]
        await asyncio.gather(
            *(submitter.decisions.SubmitDecision(r, metadata=candi, timeout=10) for r in requests)
        )
        got = await take(stream, COMMITS)
        elapsed = time.monotonic() - started
        reads = hub.reads - before
    # Every commit's event, each once (a repeat would have taken another's place).
    assert sorted(event_of(r)[1] for r in got) == sorted(r.analysis_id for r in requests)
    # One read, then at most one per rest: far fewer reads than commits (and wake-ups,
    # local or by NOTIFY).
    assert reads <= elapsed / LINGER_S + 2
    assert reads < COMMITS


def test_the_linger_is_on_by_default_and_can_be_set_or_turned_off() -> None:
    pg = {"HITL_DATABASE_URL": "postgresql://db/hitl", "HITL_JWT_SECRET": "s" * 40}
    assert Settings.from_env(pg).wake_linger_s == 0.005
    assert Settings.from_env({**pg, "HITL_WAKE_LINGER_S": "0"}).wake_linger_s == 0.0
    assert Settings.from_env({**pg, "HITL_WORKERS": "2"}).wake_linger_s == 0.005
    assert (
        Settings.from_env({**pg, "HITL_WORKERS": "2", "HITL_WAKE_LINGER_S": "0"}).wake_linger_s
        == 0.0
    )
    assert Settings.from_env({**pg, "HITL_WAKE_LINGER_S": "0.02"}).wake_linger_s == 0.02


@pytest.mark.parametrize("backend", ["postgres"])
async def test_workers_share_the_held_port_and_one_serves_on_when_the_other_stops(
    database_url: str,
) -> None:
    held = hold("127.0.0.1:0")
    try:
        # Nobody else gets the port: not another supervisor, not a single server.
        with pytest.raises(StartupError, match="cannot listen on"):
            hold(held.address)
        settings = Settings.for_tests(database_url, listen=held.address)
        with pytest.raises(StartupError, match="cannot listen on"):
            async with running_server(settings):
                pass
        # Once, before the workers: the admin (a configured password, so none is shown).
        assert await prepare_store(settings) is None
        async with running_server(settings, worker=True) as one:
            async with running_server(settings, worker=True) as two:
                assert one.port == two.port == int(held.address.rpartition(":")[2])
                assert one.generated_admin_password is None
                users, _ = await one.accounts.users.list_page(50, None)
                assert [u.username for u in users] == ["admin"]
                async with grpc.aio.insecure_channel(one.address) as channel:
                    login = await auth_pb2_grpc.AuthServiceStub(channel).Login(
                        auth_pb2.LoginRequest(
                            username="admin", password=settings.bootstrap_admin_password or ""
                        ),
                        timeout=10,
                    )
            # The second worker has drained and gone: every new connection reaches the first.
            for _ in range(CONNECTIONS):
                async with grpc.aio.insecure_channel(
                    one.address, options=[("grpc.use_local_subchannel_pool", 1)]
                ) as channel:
                    me = await auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
                        auth_pb2.GetCurrentUserRequest(),
                        metadata=bearer(login.tokens.access_token),
                        timeout=10,
                    )
                assert me.user.username == "admin"
    finally:
        held.sock.close()
