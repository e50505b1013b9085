"""HitlClient against the served process: retries and deadlines when the server can't answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import grpc
import pytest

from hitl_grpc.client import Backoff, HitlClient, HitlClientError
from tests.blackbox.harness import ADMIN_PASSWORD, Served
from tests.faultproxy import Fault, proxied
from tests.watching import submit_request

ATTEMPTS: Final = 3
# Far past the database deadline: the call ends because the attempts are spent.
CALL_S: Final = 30.0


def _count(body: str, method: str, code: str) -> float:
    prefix = f'hitl_rpc_total{{code="{code}",method="/hitl.v1.DecisionService/{method}"}} '
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


@pytest.mark.parametrize("backend", ["postgres"])
async def test_only_calls_safe_to_repeat_are_retried_while_the_database_is_down(
    database_url: str, tmp_path: Path
) -> None:
    async with proxied(database_url) as (proxy, proxied_url):
        # The proxy runs on this loop: the blocking start goes to a thread.
        served = await asyncio.to_thread(Served.start, proxied_url, tmp_path, HITL_DB_TIMEOUT_S="1")
        try:
            client = HitlClient(
                served.address,
                username="admin",
                password=ADMIN_PASSWORD,
                timeout_s=CALL_S,
                backoff=Backoff(first_s=0.05, max_s=0.2, attempts=ATTEMPTS),
            )
            async with client, asyncio.timeout(CALL_S * 2):
                submitted = (await client.submit_decision(submit_request())).decision
                await proxy.set_fault(Fault.REFUSE)
                with pytest.raises(HitlClientError) as read:
                    await client.get_decision(submitted.analysis_id)
                with pytest.raises(HitlClientError) as claim:
                    await client.claim_decision(submitted.analysis_id)
                await proxy.set_fault(Fault.NONE)
                again = await client.get_decision(submitted.analysis_id)
            body = await asyncio.to_thread(
                served.wait_for_metrics,
                f'code="UNAVAILABLE",method="/hitl.v1.DecisionService/GetDecision"}} {ATTEMPTS}.0',
                'code="UNAVAILABLE",method="/hitl.v1.DecisionService/ClaimDecision"} 1.0',
            )
        finally:
            await asyncio.to_thread(served.stop)
    assert read.value.code is grpc.StatusCode.UNAVAILABLE
    assert claim.value.code is grpc.StatusCode.UNAVAILABLE
    assert again.status == submitted.status
    # Each attempt reached the server: grpc repeated the read, and never the claim.
    assert _count(body, "GetDecision", "UNAVAILABLE") == ATTEMPTS
    assert _count(body, "ClaimDecision", "UNAVAILABLE") == 1


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_call_to_a_stopped_server_ends_by_its_deadline(
    database_url: str, tmp_path: Path
) -> None:
    # Not the `served` fixture: this test stops the server itself, mid-session.
    served = await asyncio.to_thread(Served.start, database_url, tmp_path)
    client = HitlClient(
        served.address,
        username="admin",
        password=ADMIN_PASSWORD,
        timeout_s=1.0,
        # Pauses far longer than the deadline: only one deadline for all attempts ends it.
        backoff=Backoff(first_s=30, max_s=60, attempts=5),
    )
    try:
        async with client:
            submitted = (await client.submit_decision(submit_request())).decision
            await asyncio.to_thread(served.stop)
            async with asyncio.timeout(10):
                with pytest.raises(HitlClientError) as late:
                    await client.get_decision(submitted.analysis_id)
    finally:
        if served.proc.poll() is None:  # the test failed before it stopped the server
            served.proc.kill()
            served.proc.wait()
    assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
