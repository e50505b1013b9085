"""`hitl-grpc serve` on a fresh machine: it starts, keeps what it made, and refuses bad config."""

import asyncio
import os
import signal
import socket
import stat
import sys
import uuid
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc
from psycopg import sql

from tests.harness import bearer

STARTUP_S = 60


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env.update({"HITL_LISTEN": "127.0.0.1:0", "HITL_METRICS_LISTEN": "off", **extra})
    return env


class Served:
    """A `hitl-grpc serve` child process and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), STARTUP_S)
        assert raw, f"serve exited early with {await self.proc.wait()}"
        text = raw.decode().strip()
        self.lines.append(text)
        return text

    async def address(self) -> str:
        while True:
            text = await self.line()
            if text.startswith("hitl-grpc serving on "):
                return text.rsplit(" ", 1)[-1]

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


async def _serve(cwd: Path, **env: str) -> Served:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hitl_grpc.cli",
        "serve",
        cwd=cwd,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return Served(proc)


async def _login(address: str, password: str) -> auth_pb2.LoginResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.Login(
            auth_pb2.LoginRequest(username="admin", password=password), timeout=10
        )


async def _whoami(address: str, token: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        reply = await stub.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=10
        )
        return reply.user.username


async def test_serve_on_an_empty_directory_creates_everything_and_a_restart_keeps_it(
    tmp_path: Path,
) -> None:
    first = await _serve(tmp_path)
    address = await first.address()
    [announcement] = [line for line in first.lines if "admin" in line]
    password = announcement.split("password ", 1)[1].split(" ", 1)[0]
    async with grpc.aio.insecure_channel(address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    token = (await _login(address, password)).tokens.access_token
    assert await first.stop() == 0

    assert (tmp_path / "hitl.db").is_file()
    key = tmp_path / "hitl.db.jwt-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    second = await _serve(tmp_path)
    address = await second.address()
    try:
        assert not any("password" in line for line in second.lines)
        assert (await _login(address, password)).tokens.access_token
        # Same key after the restart: the session from the first run still works.
        assert await _whoami(address, token) == "admin"
    finally:
        assert await second.stop() == 0


async def test_bootstrap_password_from_the_environment_is_not_printed(tmp_path: Path) -> None:
    served = await _serve(tmp_path, HITL_BOOTSTRAP_ADMIN_PASSWORD="a-chosen-secret-value")
    address = await served.address()
    try:
        assert not any("a-chosen-secret-value" in line for line in served.lines)
        assert (await _login(address, "a-chosen-secret-value")).tokens.access_token
    finally:
        await served.stop()


async def _run(cwd: Path, *args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hitl_grpc.cli",
        *args,
        cwd=cwd,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), STARTUP_S)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HITL_LISTEN", "no-port-here"),
        ("HITL_LISTEN", "127.0.0.1:99999"),
        ("HITL_DATABASE_URL", "mysql://somewhere/db"),
        ("HITL_DATABASE_URL", "sqlite:///:memory:"),
        ("HITL_ACCESS_TOKEN_TTL_S", "soon"),
        ("HITL_JWT_SECRET", "short"),
    ],
)
async def test_bad_setting_stops_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    code, output = await _run(tmp_path, "serve", **{variable: value})
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
    assert "Traceback" not in output
    assert not (tmp_path / "hitl.db").exists()


async def test_postgres_without_a_signing_key_is_refused(tmp_path: Path) -> None:
    code, output = await _run(
        tmp_path, "serve", HITL_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    assert code == 2
    assert "HITL_JWT_SECRET" in output


async def test_migrate_brings_a_new_database_up_to_date(tmp_path: Path) -> None:
    code, output = await _run(tmp_path, "migrate")
    assert code == 0, output
    # One line of its own, and none of alembic's INFO lines.
    assert output.splitlines() == ["created the database schema (now current)"]
    assert (tmp_path / "hitl.db").is_file()
    code, output = await _run(tmp_path, "migrate")
    assert code == 0, output
    assert output.splitlines() == ["database schema is current: nothing to do"]


async def test_migrate_says_it_created_a_postgres_schema(tmp_path: Path) -> None:
    admin = os.environ.get(
        "HITL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"hitl_migrate_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is mandatory on CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    url = admin.rsplit("/", 1)[0] + "/" + name
    try:
        code, output = await _run(
            tmp_path, "migrate", HITL_DATABASE_URL=url, HITL_JWT_SECRET="k" * 40
        )
        assert code == 0, output
        assert output.splitlines() == ["created the database schema (now current)"]
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def test_health_command_fails_when_nothing_listens(tmp_path: Path) -> None:
    code, output = await _run(tmp_path, "health", "--address", "127.0.0.1:1", "--timeout", "2")
    assert code == 1
    assert "unhealthy" in output


async def test_a_taken_metrics_port_stops_serve_before_it_touches_the_database(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = await _run(
            tmp_path,
            "serve",
            HITL_DATABASE_URL=f"sqlite:///{tmp_path / 'hitl.db'}",
            HITL_METRICS_LISTEN=f"127.0.0.1:{port}",
        )
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"hitl-grpc: cannot serve metrics on 127.0.0.1:{port}: ")
    # Nothing was created: no database, and so no bootstrap admin whose password is lost.
    assert not (tmp_path / "hitl.db").exists()


async def test_production_on_an_empty_database_needs_a_chosen_admin_password(
    tmp_path: Path,
) -> None:
    production = {"HITL_ENV": "production", "HITL_JWT_SECRET": "s" * 40}
    code, output = await _run(tmp_path, "serve", **production)
    assert code == 1
    assert output.strip().splitlines()[-1] == (
        "hitl-grpc: HITL_BOOTSTRAP_ADMIN_PASSWORD: invalid request: bootstrap_admin_password: "
        "required in production while no account exists: a generated password would be "
        "printed to the log"
    )
    assert "shown once" not in output
    served = await _serve(
        tmp_path, HITL_BOOTSTRAP_ADMIN_PASSWORD="a-chosen-secret-value", **production
    )
    try:
        address = await served.address()
        assert (await _login(address, "a-chosen-secret-value")).tokens.access_token
    finally:
        assert await served.stop() == 0
    assert not any("a-chosen-secret-value" in line for line in served.lines)
