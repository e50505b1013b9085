"""100 concurrent logins at the real argon2id cost, beside 100 bare hashes on every core.

Both run in this one invocation on this machine: the ceiling is argon2-cffi hashing 100
passwords on a thread pool sized to the cores with the server's parameters; the figure is
100 Login RPCs against a `hitl-grpc serve` subprocess, all in flight at once. While the
logins run, Health.Check is driven beside them to show the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from argon2 import PasswordHasher, Type
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from bench.load import Measured, drive, report
from bench.processes import ADMIN_PASSWORD, BENCH_SECRET, fresh_postgres, serve_subprocess
from hitl_grpc.auth.passwords import HashParams

LOGINS = 100
USERS = 20
ROUNDS = 3
PASSWORD = "bench-user-password-0001"


async def _hash_ceiling(count: int) -> float:
    """Seconds to hash `count` passwords on a pool sized to the cores, server parameters."""
    params = HashParams()
    hasher = PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        type=Type.ID,
    )
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        await asyncio.gather(
            *(loop.run_in_executor(pool, hasher.hash, "warm-up") for _ in range(4))
        )
        started = time.perf_counter()
        await asyncio.gather(
            *(loop.run_in_executor(pool, hasher.hash, f"password-{n}") for n in range(count))
        )
        return time.perf_counter() - started


async def _setup(auth: auth_pb2_grpc.AuthServiceAsyncStub) -> list[str]:
    admin = await auth.Login(
        auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=60
    )
    meta = (("authorization", f"Bearer {admin.tokens.access_token}"),)
    names = [f"bench-{n:03d}" for n in range(USERS)]
    for name in names:
        await auth.CreateUser(
            auth_pb2.CreateUserRequest(
                username=name, password=PASSWORD, role=access_pb2.ROLE_ANALYST
            ),
            metadata=meta,
            timeout=60,
        )
    return names


async def _storm(
    auth: auth_pb2_grpc.AuthServiceAsyncStub,
    health: health_pb2_grpc.HealthAsyncStub,
    names: list[str],
) -> tuple[Measured, Measured]:
    turn = 0

    async def login() -> object:
        nonlocal turn
        turn += 1
        reply = await auth.Login(
            auth_pb2.LoginRequest(username=names[turn % len(names)], password=PASSWORD),
            timeout=120,
        )
        assert reply.tokens.access_token
        return reply

    async def check() -> object:
        return await health.Check(health_pb2.HealthCheckRequest(), timeout=30)

    # The ratio is taken from a storm alone; responsiveness from a second one with probes.
    alone = await drive(login, concurrency=LOGINS, total=LOGINS)
    storm = asyncio.create_task(drive(login, concurrency=LOGINS, total=LOGINS))
    checks = await drive(check, concurrency=1, total=100)
    await storm
    return alone, checks


async def run() -> None:
    """The storm on PostgreSQL (the budget's backend), then on SQLite."""
    with fresh_postgres("hitl_bench_logins") as url:
        await _backend("postgres", {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET})
    await _backend("sqlite", {})


async def _backend(backend: str, env: dict[str, str]) -> None:
    """Prints the login storm beside the hashing ceiling and their ratio.

    The machine may be shared, so storm and ceiling alternate for a few rounds and the
    best of each is reported: both are then measured under the same background load.
    """
    ceilings: list[float] = []
    storms: list[tuple[Measured, Measured]] = []
    with serve_subprocess(env) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            names = await _setup(auth)
            for _ in range(ROUNDS):
                ceilings.append(await _hash_ceiling(LOGINS))
                storms.append(await _storm(auth, health, names))
    assert all(s.errors == 0 for s, _ in storms), "some logins failed"
    ceiling_s = min(ceilings)
    logins, checks = min(storms, key=lambda pair: pair[0].seconds)
    print(f"-- {backend}")
    print(
        f"rounds: logins {', '.join(f'{s.seconds:.2f}' for s, _ in storms)} s; "
        f"hashes {', '.join(f'{c:.2f}' for c in ceilings)} s"
    )
    print(
        f"{LOGINS} concurrent logins: {logins.seconds:.2f} s wall, "
        f"p50 {logins.p50_ms:.0f} ms p99 {logins.p99_ms:.0f} ms; "
        f"{LOGINS} argon2id hashes on {os.cpu_count()} threads: {ceiling_s:.2f} s"
    )
    report(f"{LOGINS} concurrent logins, {backend} (wall)", logins.seconds, ceiling_s, "s")
    print(
        f"Health.Check during the storm: p50 {checks.p50_ms:.1f} ms "
        f"p99 {checks.p99_ms:.1f} ms errors {checks.errors}"
    )
