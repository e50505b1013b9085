"""The hot path on PostgreSQL: the statements nearly every call runs, through psycopg itself.

Measured on this service, a statement sent through SQLAlchemy's async bridge (greenlet
switch, execution context, compiled-cache lookup, result wrapping, pool events) costs
about three times the client CPU of the same statement sent by psycopg from a
psycopg_pool connection (0.9 ms against 0.3 ms). The server's one event loop is what
limits it, so the calls most requests make go this way:

- the access check of every call (the account and its session, one indexed read), and
- SubmitDecision as one data-modifying statement in autocommit: the account check, the
  decision, its outbox event and its audit row, committed together in one round trip.

The SQLAlchemy engine stays for the schema, migrations and every other statement. Both
pools bound their connections by the same deadlines (store/engine.py); a cancelled wait
closes its connection (DroppedOnCancel), which the pool then replaces.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, Final

import psycopg
from psycopg import AsyncRawCursor
from psycopg.rows import namedtuple_row
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import URL

from hitl_grpc.domain import errors, lifecycle
from hitl_grpc.domain.access import StoredAccess
from hitl_grpc.domain.ports import CheckedPage, CheckedSubmit, EventKind
from hitl_grpc.domain.queue import PageEntry, QueueFilter, QueueKey
from hitl_grpc.domain.values import (
    Account,
    AccountCheck,
    AuditRecord,
    Decision,
    Role,
    UserId,
)
from hitl_grpc.store import audit_chain
from hitl_grpc.store.audit import audit_content
from hitl_grpc.store.codec import (
    NUL,
    aware,
    decision_to_row,
    row_to_payload,
)
from hitl_grpc.store.door import LATE, UNAVAILABLE
from hitl_grpc.store.engine import DroppedOnCancel, postgres_connect_args
from hitl_grpc.store.events import row_bytes
from hitl_grpc.store.outbox import NEW_EVENTS_POSTGRES, StoredEvent, new_events
from hitl_grpc.store.users import account_from_row

log = logging.getLogger("hitl_grpc.store")

# A time as Python's isoformat() writes an aware UTC one, and as the audit digest wants it.
_ISO: Final = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
# The times the INSERT stamps, left null in the event payload the caller encodes, and
# filled in by the statement. The JSON text of a key can't occur inside an encoded string
# (its quotes would be escaped), so replacing it touches only the key itself.
_STAMPED: Final = ("created_at", "updated_at", "sla_deadline")
# What a stamped time takes in an event's size estimate: an ISO 8601 time of this length.
_TIME_TEXT: Final = "0000-00-00T00:00:00.000000+00:00"

_ACCOUNT: Final = """
SELECT u.*, EXISTS (
    SELECT 1 FROM refresh_tokens r WHERE r.family_id = %(sid)s AND r.revoked_at IS NOT NULL
) AS session_revoked
FROM users u WHERE u.id = %(uid)s
"""

# The access part of the account, for a statement that folds the check in (StoredAccess).
_ACCESS: Final = """
SELECT u.id AS u_id, u.username AS u_username, u.role AS u_role, u.active AS u_active,
       u.generation AS u_generation, EXISTS (
    SELECT 1 FROM refresh_tokens r WHERE r.family_id = %(sid)s AND r.revoked_at IS NOT NULL
) AS u_revoked
FROM users u WHERE u.id = %(uid)s
"""
# Whether that account admits the token for the method.
_ADMITS: Final = """
acct.u_active AND NOT acct.u_revoked AND acct.u_generation = %(generation)s
AND acct.u_role = ANY(%(roles)s) AND acct.u_username = %(username)s
"""

# The columns a submit fills from the decision's event payload; the statement stamps the
# times and adds the hash, which the payload leaves out.
_DECISION_COLUMNS: Final = (
    "analysis_id",
    "incident_id",
    "threat_level",
    "source_ip",
    "attributed_actor",
    "confidence",
    "iocs",
    "ttps",
    "recommended_actions",
    "forensic_summary",
    "priority",
    "detected_at",
    "expires_at",
    "submitted_by",
    "status",
    "version",
    "lease_epoch",
    "action_verdicts",
)


def _payload_sql() -> str:
    text = "%(payload)s::text"
    for name in _STAMPED:
        column = "ins.sla_deadline" if name == "sla_deadline" else "ins.created_at"
        stamped = f"""'"{name}":"' || {_ISO.format(column)} || '"'"""
        text = f"""replace({text}, '"{name}":null', {stamped})"""
    return f"({text})::json"


# One statement, one round trip, one transaction (autocommit): the account as it is now,
# and only if it still admits the caller, the decision, its staged event and its audit
# row. The decision's columns come from its event payload, one JSON parameter the
# database takes apart (json_populate_record), rather than a parameter each. The deferred
# triggers of migrations 0002 and 0005 publish the event and link the audit row at its
# COMMIT, as for any other writer. ON CONFLICT DO NOTHING: a resubmit inserts nothing,
# and the caller reads the stored row to judge it.
_SUBMIT: Final = f"""
WITH acct AS ({_ACCESS}),
rec AS (SELECT * FROM json_populate_record(NULL::decisions, %(payload)s::text::json)),
ok AS (
    SELECT 1 FROM acct, rec
    WHERE {_ADMITS}
      AND (rec.expires_at IS NULL OR rec.expires_at > now())
),
ins AS (
    INSERT INTO decisions
        ({", ".join(_DECISION_COLUMNS)}, payload_hash, created_at, updated_at, sla_deadline)
    SELECT {", ".join(f"rec.{name}" for name in _DECISION_COLUMNS)},
           %(payload_hash)s, now(), now(), now() + %(sla)s
    FROM ok, rec
    ON CONFLICT (analysis_id) DO NOTHING
    RETURNING analysis_id, status, priority, version, created_at, sla_deadline
),
ev AS (
    INSERT INTO decision_events_staged
        (analysis_id, kind, status, priority, version, time, payload, size)
    SELECT ins.analysis_id, %(event_kind)s, ins.status, ins.priority, ins.version,
           ins.created_at, {_payload_sql()}, %(event_size)s
    FROM ins
),
au AS (
    INSERT INTO audit_events
        (time, actor, kind, target, peer, outcome, details, request_id, chain, digest)
    SELECT ins.created_at, %(a_actor)s, %(a_kind)s, %(a_target)s, %(a_peer)s, %(a_outcome)s,
           %(a_details)s, %(a_request_id)s, %(a_chain)s,
           encode(sha256(convert_to(
               %(a_head)s || {_ISO.format("ins.created_at")} || %(a_tail)s, 'UTF8')), 'hex')
    FROM ins
)
SELECT acct.*, now() AS db_now, ins.created_at AS new_created_at,
       ins.sla_deadline AS new_sla_deadline
FROM (SELECT 1) AS one LEFT JOIN acct ON true LEFT JOIN ins ON true
"""  # noqa: S608 - composed of this module's constants; every value is a bound parameter


def _page_keys_sql(priorities: bool, statuses: bool, after: bool) -> str:
    """The folded page read for one shape of filter: the account, then the page's keys.

    The inner WHERE implies ix_decisions_queue's predicate and its ORDER BY is the index's,
    so PostgreSQL walks the index and stops after `limit` rows, as for the whole-row read.
    """
    where = [f"status IN ({', '.join(str(int(s)) for s in sorted(lifecycle.OPEN))})"]
    if priorities:
        where.append("priority = ANY(%(priorities)s)")
    if statuses:
        where.append("status = ANY(%(statuses)s)")
    if after:
        where.append(
            "(priority, created_at, analysis_id) > (%(after_p)s, %(after_c)s, %(after_i)s)"
        )
    return f"""
WITH acct AS ({_ACCESS})
SELECT acct.*, p.analysis_id, p.version, p.priority, p.created_at
FROM (SELECT 1) AS one LEFT JOIN acct ON true
LEFT JOIN LATERAL (
    SELECT analysis_id, version, priority, created_at FROM decisions
    WHERE {" AND ".join(where)}
    ORDER BY priority, created_at, analysis_id
    LIMIT %(limit)s
) AS p ON {_ADMITS}
ORDER BY p.priority, p.created_at, p.analysis_id
"""  # noqa: S608 - composed of this module's constants; every value is a bound parameter


_PAGE_KEYS: Final = {
    (p, s, a): _page_keys_sql(p, s, a)
    for p in (False, True)
    for s in (False, True)
    for a in (False, True)
}


def _stored(row: Any) -> StoredAccess | None:
    """The access columns of a folded statement's row; None if no such account."""
    if row.u_id is None:
        return None
    return StoredAccess(
        user_id=UserId(row.u_id),
        username=row.u_username,
        role=Role(row.u_role),
        active=row.u_active,
        generation=row.u_generation,
        session_revoked=row.u_revoked,
    )


class HotPath:
    """The hot statements of one PostgreSQL database, on a pool of psycopg connections."""

    def __init__(
        self,
        url: URL,
        *,
        timeout_s: float,
        max_size: int,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._after_commit = after_commit
        # Statements sent, by name: what a call costs the database, counted.
        self.executed: Counter[str] = Counter()
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout_s,
            # The pool replaces a broken connection in the background, backing off 1, 2,
            # 4 s... for five minutes by default: after an outage calls would wait out that
            # backoff though the database is back. Giving up after one deadline instead
            # hands reconnecting to the calls, each of which starts a fresh attempt.
            reconnect_timeout=timeout_s,
            name="hitl-hot",
            connection_class=DroppedOnCancel,
            kwargs={
                **postgres_connect_args(timeout_s),
                "autocommit": True,
                "row_factory": namedtuple_row,
            },
        )

    def wake_on_commit(self, after_commit: Callable[[], None]) -> None:
        """Called after each commit that appended events (the server's event reader wakes)."""
        self._after_commit = after_commit

    def reconnect_errors(self) -> int:
        """How many times the pool has failed to open a connection."""
        return int(self._pool.get_stats().get("connections_errors", 0))

    async def open(self) -> None:
        """Starts the pool; connections open in the background, as calls need them."""
        await self._pool.open(wait=False)

    async def close(self, within_s: float) -> None:
        """Stops the pool's workers and closes its connections, in `within_s` at most."""
        try:
            async with asyncio.timeout(within_s):
                await self._pool.close(timeout=within_s / 2)
        except TimeoutError:
            log.error("closing the hot-path pool took over %.1f s; left to the exit", within_s)

    async def _rows(self, name: str, query: str, params: dict[str, Any]) -> Sequence[Any]:
        """The rows of one statement, under the database deadline; faults are Unavailable."""
        self.executed[name] += 1
        text, names = _positional(query)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._pool.connection() as conn:
                    cursor = AsyncRawCursor(conn, row_factory=namedtuple_row)
                    await cursor.execute(text, [params[n] for n in names], prepare=True)
                    rows: list[Any] = await cursor.fetchall()
                    return rows
        except TimeoutError:
            raise errors.Unavailable(LATE) from None
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError) as exc:
            raise errors.Unavailable(UNAVAILABLE) from exc

    async def read_new(
        self, after: int, limit: int, budget_bytes: int
    ) -> tuple[tuple[StoredEvent, ...], bool]:
        """EventStore.read_new in one statement, without a transaction around it."""
        params = {"after": after, "limit": limit, "budget": budget_bytes}
        rows = await self._rows("events", NEW_EVENTS_POSTGRES, params)
        return new_events(rows, limit, budget_bytes)

    async def account_with_session(
        self, user_id: UserId, session_id: str
    ) -> tuple[Account, bool] | None:
        """The account and whether the session (refresh family) was revoked, in one read."""
        if NUL in user_id or NUL in session_id:
            return None
        rows = await self._rows("account", _ACCOUNT, {"uid": user_id, "sid": session_id})
        return (account_from_row(rows[0]), bool(rows[0].session_revoked)) if rows else None

    async def submit(
        self,
        check: AccountCheck,
        pending: Decision,
        payload_hash: str,
        *,
        sla: timedelta,
        audit: AuditRecord,
    ) -> CheckedSubmit:
        """Checks the caller's account and queues the decision in one statement."""
        if NUL in check.user_id or NUL in check.session_id:
            return CheckedSubmit(None, None, None)
        params = _submit_params(check, pending, payload_hash, sla, audit)
        (row,) = await self._rows("submit", _SUBMIT, params)
        now = aware(row.db_now)
        assert now is not None
        decision = None
        if row.new_created_at is not None:
            created_at = aware(row.new_created_at)
            sla_deadline = aware(row.new_sla_deadline)
            assert created_at is not None and sla_deadline is not None
            decision = replace(
                pending, created_at=created_at, updated_at=created_at, sla_deadline=sla_deadline
            )
            if self._after_commit is not None:
                self._after_commit()
        return CheckedSubmit(_stored(row), decision, now)

    async def page_keys(
        self, check: AccountCheck, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> CheckedPage:
        """Checks the caller's account and reads the keys of the next open decisions."""
        if NUL in check.user_id or NUL in check.session_id:
            return CheckedPage(None, [])
        params: dict[str, Any] = {**_access_params(check), "limit": limit}
        if queue_filter.priorities:
            params["priorities"] = sorted(int(p) for p in queue_filter.priorities)
        if queue_filter.statuses:
            params["statuses"] = sorted(int(s) for s in queue_filter.statuses)
        if after is not None:
            params.update(
                after_p=int(after.priority), after_c=after.created_at, after_i=after.analysis_id
            )
        shape = (bool(queue_filter.priorities), bool(queue_filter.statuses), after is not None)
        rows = await self._rows("page", _PAGE_KEYS[shape], params)
        keys = [
            PageEntry(r.analysis_id, r.version, r.priority, r.created_at)
            for r in rows
            if r.analysis_id is not None
        ]
        return CheckedPage(_stored(rows[0]), keys)


@functools.cache
def _positional(query: str) -> tuple[str, tuple[str, ...]]:
    """A statement of %(name)s placeholders as PostgreSQL's own $1, $2... and the names in
    their order. Sent as such through a raw cursor, and always prepared, a statement skips
    psycopg's per-call placeholder mapping and prepare bookkeeping (~30 µs of loop CPU)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    text = _PLACEHOLDER.sub(number, query)
    assert "%" not in text, "a hot statement holds only %(name)s placeholders"
    return text, tuple(names)


_PLACEHOLDER: Final = re.compile(r"%\((\w+)\)s")


def _access_params(check: AccountCheck) -> dict[str, Any]:
    """The parameters of _ACCESS and _ADMITS: whose account, and what it must still be."""
    return {
        "uid": check.user_id,
        "sid": check.session_id,
        "generation": check.generation,
        "roles": sorted(int(r) for r in check.roles),
        "username": check.username,
    }


def _submit_params(
    check: AccountCheck,
    pending: Decision,
    payload_hash: str,
    sla: timedelta,
    audit: AuditRecord,
) -> dict[str, Any]:
    """The statement's parameters: the decision as its event's payload, the audit row's
    parts, and the account check's."""
    # The event carries the decision as the INSERT leaves it; the statement stamps its times.
    payload = {**row_to_payload(decision_to_row(pending)), **dict.fromkeys(_STAMPED)}
    stored = audit_content(audit)
    head, tail = audit_chain.digest_parts(stored)
    return {
        **_access_params(check),
        "payload": json.dumps(payload, separators=(",", ":")),
        "payload_hash": payload_hash,
        "sla": sla,
        "event_kind": EventKind.ADDED.value,
        # The size of the payload as stored: each stamped time then holds an ISO 8601 text.
        "event_size": row_bytes(payload) + len(_STAMPED) * len(_TIME_TEXT),
        "a_actor": stored["actor"],
        "a_kind": stored["kind"],
        "a_target": stored["target"],
        "a_peer": stored["peer"],
        "a_outcome": stored["outcome"],
        "a_details": Json(stored["details"]),
        "a_request_id": stored["request_id"],
        "a_chain": stored["chain"],
        "a_head": head,
        "a_tail": tail,
    }
