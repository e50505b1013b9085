"""The tamper-evident audit from outside: two `serve` processes writing, `audit verify`,
and the SIEM export with grpcurl."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from hitl.v1 import access_pb2

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, JWT_SECRET, Served
from tests.harness import bearer

WRITERS_PER_SERVER = 4
WRITES_PER_WRITER = 10


def _verify(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env.update(
        {
            "PYTHONFAULTHANDLER": "1",
            "HITL_DATABASE_URL": database_url,
            "HITL_JWT_SECRET": JWT_SECRET,
            "HITL_METRICS_LISTEN": "off",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "hitl_grpc.cli", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CALL_S * 3,
        check=False,
    )


def _sql(database_url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """A statement run straight on the database, as someone with its password could."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(statement.replace("%s", "?"), params).fetchall()
    with psycopg.connect(database_url, autocommit=True) as pg:
        cursor = pg.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _write(served: Served, token: str) -> None:
    """One writer's share: submits, each an audit row written in its own transaction."""
    for _ in range(WRITES_PER_WRITER):
        served.submit(bearer(token))


def test_two_servers_writing_at_once_leave_a_chain_that_verify_accepts_until_edited(
    make_served: ServedFactory, database_url: str
) -> None:
    one, two = make_served(), make_served()
    tokens = {id(s): s.token(access_pb2.ROLE_SERVICE) for s in (one, two)}
    before = _sql(database_url, "SELECT count(*) FROM audit_events")[0][0]
    with ThreadPoolExecutor(WRITERS_PER_SERVER * 2) as pool:
        futures = [
            pool.submit(_write, served, tokens[id(served)])
            for _ in range(WRITERS_PER_SERVER)
            for served in (one, two)
        ]
        for future in futures:
            future.result(timeout=CALL_S * 6)
    one.assert_alive()
    two.assert_alive()

    seqs = [row[0] for row in _sql(database_url, "SELECT seq FROM audit_events ORDER BY seq")]
    assert len(seqs) == before + 2 * WRITERS_PER_SERVER * WRITES_PER_WRITER
    assert seqs == list(range(1, len(seqs) + 1))
    done = _verify(database_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"audit chain intact: {len(seqs)} rows" in done.stdout

    [(edited,)] = _sql(database_url, "SELECT id FROM audit_events WHERE seq = %s", len(seqs) // 2)
    _sql(database_url, "UPDATE audit_events SET peer = %s WHERE id = %s", "ipv4:6.6.6.6", edited)
    done = _verify(database_url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"broken at row {edited} (seq {len(seqs) // 2}): " in done.stdout
    assert "edited" in done.stdout


def _messages(text: str) -> list[dict[str, Any]]:
    """The JSON objects grpcurl prints one after another for a server stream."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        while text[at].isspace():
            at += 1
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


@pytest.mark.parametrize("backend", ["sqlite"])
def test_grpcurl_exports_json_lines_and_resumes_from_a_cursor(served: Served) -> None:
    token = served.admin_token()
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    for _ in range(3):
        served.submit(service)
    whole = served.grpcurl("hitl.v1.AuditService/ExportAuditEvents", token=token, data="{}")
    assert whole.returncode == 0, whole.stderr
    messages = _messages(whole.stdout)
    events = [json.loads(m["json_line"]) for m in messages]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["kind"] for e in events].count("decision.submit") == 3
    assert all(len(e["hash"]) == 64 and e["request_id"] for e in events)

    cursor = messages[1]["cursor"]
    rest = served.grpcurl(
        "hitl.v1.AuditService/ExportAuditEvents",
        token=token,
        data=json.dumps({"resume_cursor": cursor}),
    )
    assert rest.returncode == 0, rest.stderr
    assert [m["json_line"] for m in _messages(rest.stdout)] == [
        m["json_line"] for m in messages[2:]
    ]

    forged = served.grpcurl(
        "hitl.v1.AuditService/ExportAuditEvents",
        token=token,
        data=json.dumps({"resume_cursor": cursor[:-1] + "!"}),
    )
    assert forged.returncode != 0
    assert "InvalidArgument" in forged.stderr
    assert "resume_cursor: is not a cursor this method returned" in forged.stderr


def test_verify_without_a_schema_says_so_and_exits_2(tmp_path: Any) -> None:
    done = _verify(f"sqlite:///{tmp_path / 'empty.db'}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "hitl-grpc audit verify: database has no schema" in done.stderr
