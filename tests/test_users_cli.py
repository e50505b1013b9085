"""`hitl-grpc users --direct ...` works on the configured database, for the first admin and
recovery (without --direct the same commands go over the API: tests/blackbox/test_blackbox_cli.py).
"""

import asyncio
import json
import os
import sys

import grpc

from hitl_grpc.domain.ports import AuditQuery
from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness
from tests.signin import enrolled, rpc_error, whoami

TIMEOUT_S = 60


async def _users(database_url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `hitl-grpc users --direct ...`."""
    env = {
        **os.environ,
        "HITL_DATABASE_URL": database_url,
        "HITL_JWT_SECRET": "cli-test-signing-key-" + "c" * 32,
        "HITL_METRICS_LISTEN": "off",
        # Same algorithm, test cost, like the in-process servers.
        "HITL_PASSWORD_MEMORY_KIB": "1024",
        "HITL_PASSWORD_TIME_COST": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hitl_grpc.cli",
        "users",
        "--direct",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else b""), TIMEOUT_S
    )
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_create_with_a_password_from_stdin(server: Harness, database_url: str) -> None:
    code, out, err = await _users(
        database_url,
        "create",
        "Ops-Lead",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 0, err
    assert "Ops-Lead\tadmin\tactive" in out and PASSWORD not in out
    token = (await server.login("ops-lead")).tokens.access_token
    assert (await whoami(server, token)).role == Role.ADMIN.value
    [row] = (
        await server.running.accounts.trail.page(AuditQuery(kind="user.created", target="Ops-Lead"))
    )[0]
    assert (row.actor, row.peer) == ("cli", "local")
    assert row.request_id.startswith("cli-") and len(row.request_id) == 36


async def test_create_without_a_password_prints_a_generated_one(
    server: Harness, database_url: str
) -> None:
    code, out, err = await _users(database_url, "create", "svc", "--role", "service")
    assert code == 0, err
    password = out.split("password: ", 1)[1].split(" ", 1)[0]
    assert (await server.login("svc", password)).tokens.access_token


async def test_list_shows_every_account(server: Harness, database_url: str) -> None:
    await server.create_user(Role.VIEWER, "viewer-one")
    code, out, err = await _users(database_url, "list")
    assert code == 0, err
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert names == ["admin", "viewer-one"]


async def test_list_json_is_the_api_shape_and_stderr_stays_quiet(
    server: Harness, database_url: str
) -> None:
    await server.create_user(Role.VIEWER, "viewer-two")
    code, out, err = await _users(database_url, "list", "--json")
    assert code == 0, err
    assert err == ""  # no alembic INFO lines, no log noise
    rows = json.loads(out)
    assert [(r["username"], r["role"], r["active"], r["mfa_enabled"]) for r in rows] == [
        ("admin", "ROLE_ADMIN", True, False),
        ("viewer-two", "ROLE_VIEWER", True, False),
    ]
    assert all(r["created_at"].endswith("Z") for r in rows)


async def test_set_role_and_deactivate_take_effect_on_live_tokens(
    server: Harness, database_url: str
) -> None:
    user = await server.create_user(Role.ADMIN, "demote-me")
    token = (await server.login(user.username)).tokens.access_token
    code, _, err = await _users(database_url, "set-role", "DEMOTE-ME", "viewer")
    assert code == 0, err
    assert (await whoami(server, token)).role == Role.VIEWER.value
    code, _, err = await _users(database_url, "deactivate", "demote-me")
    assert code == 0, err
    error = await rpc_error(whoami(server, token))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    code, _, err = await _users(database_url, "activate", "demote-me")
    assert code == 0, err
    assert (await server.login(user.username)).tokens.access_token


async def test_reset_password_recovers_an_account(server: Harness, database_url: str) -> None:
    user = await server.create_user(Role.ANALYST, "forgetful")
    old = (await server.login(user.username)).tokens.access_token
    code, _, err = await _users(
        database_url,
        "reset-password",
        "forgetful",
        "--password-stdin",
        stdin="a-brand-new-password-1\n",
    )
    assert code == 0, err
    error = await rpc_error(whoami(server, old))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await server.login(user.username, "a-brand-new-password-1")).tokens.access_token
    error = await rpc_error(server.login(user.username))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_refusals_exit_1_with_a_reason(server: Harness, database_url: str) -> None:
    code, _, err = await _users(database_url, "deactivate", "admin")
    assert code == 1 and "last active admin" in err
    code, _, err = await _users(database_url, "set-role", "nobody", "viewer")
    assert code == 1 and "no user" in err
    code, _, err = await _users(
        database_url, "create", "ADMIN", "--role", "viewer", "--password-stdin", stdin=PASSWORD
    )
    assert code == 1 and "taken" in err
    assert (await server.login("admin", "bootstrap-password-for-tests")).tokens.access_token


async def _locked(server: Harness, username: str) -> None:
    for n in range(server.running.settings.login_max_failures):
        await rpc_error(server.login(username, f"wrong-password-{n}"))
    error = await rpc_error(server.login(username))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unlock_lets_a_locked_out_admin_back_in(server: Harness, database_url: str) -> None:
    await _locked(server, "admin")
    code, out, err = await _users(database_url, "unlock", "admin")
    assert code == 0, err
    assert out.startswith("unlocked admin\tadmin")
    assert (await server.login("admin", "bootstrap-password-for-tests")).tokens.access_token
    [row], _ = await server.running.accounts.trail.page(AuditQuery(kind="user.unlocked"))
    assert (row.actor, row.target, row.peer) == ("cli", "admin", "local")


async def test_reset_password_also_lifts_the_lockout(server: Harness, database_url: str) -> None:
    user = await server.create_user(Role.ANALYST)
    await _locked(server, user.username)
    code, _, err = await _users(
        database_url, "reset-password", user.username, "--password-stdin", stdin=PASSWORD + "!\n"
    )
    assert code == 0, err
    assert (await server.login(user.username, PASSWORD + "!")).tokens.access_token


async def test_reset_mfa_turns_it_off(server: Harness, database_url: str) -> None:
    account = await enrolled(server)
    code, out, err = await _users(database_url, "reset-mfa", account.user.username)
    assert code == 0, err
    assert f"{account.user.username}\tanalyst\tactive\t-" in out
    assert (await server.login(account.user.username)).WhichOneof("result") == "tokens"


async def test_a_service_account_is_bound_to_a_certificate_and_unbound(
    server: Harness, database_url: str
) -> None:
    code, out, err = await _users(
        database_url,
        "create",
        "candi",
        "--role",
        "service",
        "--certificate-subject",
        "CN=candi,O=SOC",
    )
    assert code == 0, err
    # Bound to a certificate, it needs no password and none is printed.
    assert out.startswith("created candi\tservice\tactive\t-\t") and "password" not in out
    assert out.rstrip("\n").endswith("\tCN=candi,O=SOC")
    assert (await server.running.accounts.users.find("candi")).certificate_subject == (
        "CN=candi,O=SOC"
    )
    code, out, err = await _users(database_url, "set-certificate", "candi", "CN=candi-2,O=SOC")
    assert code == 0 and out.rstrip("\n").endswith("\tCN=candi-2,O=SOC"), err
    code, out, err = await _users(database_url, "list", "--json")
    assert {r["username"]: r["certificate_subject"] for r in json.loads(out)} == {
        "admin": "",
        "candi": "CN=candi-2,O=SOC",
    }
    code, out, err = await _users(database_url, "set-certificate", "candi", "--clear")
    assert code == 0 and out.rstrip("\n").endswith("\t-"), err
    assert (await server.running.accounts.users.find("candi")).certificate_subject == ""
    # Only a SERVICE account can be bound.
    code, _, err = await _users(database_url, "set-certificate", "admin", "CN=admin,O=SOC")
    assert code == 1 and "certificate_subject" in err, err
