"""The tamper-evident audit chain: what each row's hash covers, and checking a whole chain.

Every audit row has a `digest`: SHA-256 of a canonical encoding of its content (time,
actor, kind, target, peer, outcome, details, request id). Its `hash` is SHA-256 over the
chain's name, the row's `seq` (1, 2, ... per chain, no gaps), the previous row's hash
(`prev_hash`; 64 zeros for the first) and its digest. `audit_chain_heads` keeps each chain's
last seq and hash. So an edited row no longer matches its digest, a removed or reordered
row breaks the next row's `prev_hash` or the seq run, and rows cut from the end disagree
with the head.

Who links a row, with several replicas writing at once:
- PostgreSQL: a deferred constraint trigger (migration 0005) at COMMIT takes the event
  log's transaction-scoped advisory lock (the same key, so every committing writer takes
  its locks in one order and none can deadlock), then locks the chain head FOR UPDATE,
  draws the next seq and computes the hash with `sha256()` in SQL. The lock is released
  only after the commit is visible, so seq order is commit order: a reader that sees seq n
  sees every seq below it, and an export can resume from a seq without gaps.
- SQLite: writers hold the database's write lock from BEGIN IMMEDIATE, so the unit of
  work links its rows in Python right before COMMIT.

A hash chain without a secret proves only that rows were not changed by someone who did
not also recompute every later hash: anchor it by exporting the hashes to a SIEM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hitl_grpc.store.codec import aware
from hitl_grpc.store.door import Door
from hitl_grpc.store.tables import audit_chain_heads, audit_events

# The one chain every row joins today; the schema keys rows and heads by chain.
CHAIN: Final = "audit"
GENESIS: Final = "0" * 64
# The version of the canonical encoding, inside what the digest covers.
ENCODING_VERSION: Final = 1
_PAGE: Final = 1000


def canonical_time(value: datetime) -> str:
    """A stored time as the digest sees it: UTC, microseconds (what both backends keep)."""
    moment = aware(value)
    assert moment is not None
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _canonical(row: Mapping[str, Any], time: str) -> str:
    body = {
        "v": ENCODING_VERSION,
        "time": time,
        "actor": row["actor"],
        "kind": row["kind"],
        "target": row["target"],
        "peer": row["peer"],
        "outcome": row["outcome"],
        "details": row["details"],
        "request_id": row["request_id"],
    }
    # Sorted keys, no spaces, ASCII only: one byte string per content, whatever wrote it.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_digest(row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a row's content, as stored."""
    text = _canonical(row, canonical_time(row["time"]))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def digest_parts(row: Mapping[str, Any]) -> tuple[str, str]:
    """The canonical JSON of a row's content before and after its time, for a writer
    whose statement stamps the time (SHA-256 of head + canonical time + tail is the
    digest)."""
    # A marker of the canonical time's own length and alphabet, found once in the text.
    marker = "0000-00-00T00:00:00.000000+00:00"
    text = _canonical(row, marker)
    at = text.rindex(f'"time":"{marker}"') + len('"time":"')
    return text[:at], text[at + len(marker) :]


def link_hash(chain: str, seq: int, prev_hash: str, digest: str) -> str:
    """A row's hash from its place and content; the PostgreSQL trigger computes the same."""
    return hashlib.sha256(f"{chain}\n{seq}\n{prev_hash}\n{digest}".encode()).hexdigest()


async def link_in_python(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Gives rows about to be inserted their seq and hashes (SQLite: the writer holds the
    database's write lock, so nobody else links in between), and moves the head on."""
    heads = audit_chain_heads
    head = (
        await conn.execute(select(heads.c.seq, heads.c.hash).where(heads.c.chain == CHAIN))
    ).one_or_none()
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    for row in rows:
        seq += 1
        row["chain"], row["seq"], row["prev_hash"] = CHAIN, seq, prev
        row["hash"] = prev = link_hash(CHAIN, seq, prev, row["digest"])
    if head is None:
        await conn.execute(heads.insert().values(chain=CHAIN, seq=seq, hash=prev))
    else:
        await conn.execute(update(heads).where(heads.c.chain == CHAIN).values(seq=seq, hash=prev))


@dataclass(frozen=True)
class ChainBreak:
    """The first row of a chain that does not check out, and why."""

    chain: str
    row_id: int | None
    seq: int | None
    reason: str


@dataclass(frozen=True)
class ChainReport:
    """What checking every chain found."""

    rows: int
    chains: int
    breaks: tuple[ChainBreak, ...]

    @property
    def ok(self) -> bool:
        """True when every chain checks out."""
        return not self.breaks


async def _rows(conn: AsyncConnection, chain: str, upto: int | None) -> AsyncIterator[Any]:
    t = audit_events
    after = 0
    while True:
        stmt = select(t).where(t.c.chain == chain, t.c.seq > after)
        if upto is not None:
            stmt = stmt.where(t.c.seq <= upto)
        page = (await conn.execute(stmt.order_by(t.c.seq).limit(_PAGE))).all()
        for row in page:
            yield row
        if len(page) < _PAGE:
            return
        after = page[-1].seq


def _content(row: Any) -> dict[str, Any]:
    return {
        "time": row.time,
        "actor": row.actor,
        "kind": row.kind,
        "target": row.target,
        "peer": row.peer,
        "outcome": row.outcome,
        "details": row.details,
        "request_id": row.request_id,
    }


def _check_row(chain: str, row: Any, expected_seq: int, prev: str, prev_id: int | None) -> str:
    """Why this row breaks the chain, or ''."""
    if row.seq != expected_seq:
        return f"has seq {row.seq} where {expected_seq} was due: rows before it are missing"
    if content_digest(_content(row)) != row.digest:
        return "its content does not match its digest: the row was edited"
    if row.prev_hash != prev:
        before = f"row {prev_id}" if prev_id is not None else "the start of the chain"
        return (
            f"its previous hash does not match {before}: rows were removed, reordered or rewritten"
        )
    if link_hash(chain, row.seq, row.prev_hash, row.digest) != row.hash:
        return "its hash does not match its digest and place: the row was edited"
    return ""


async def _check_chain(
    conn: AsyncConnection, chain: str, head: Any | None
) -> tuple[int, ChainBreak | None]:
    count, prev, prev_id, last_seq = 0, GENESIS, None, 0
    # Rows past the head read first were committed since: the next check covers them.
    async for row in _rows(conn, chain, head.seq if head is not None else None):
        count += 1
        why = _check_row(chain, row, last_seq + 1, prev, prev_id)
        if why:
            return count, ChainBreak(chain, row.id, row.seq, why)
        prev, prev_id, last_seq = row.hash, row.id, row.seq
    if head is None:
        if count:
            return count, ChainBreak(chain, None, None, "the chain has rows but no head")
        return count, None
    if head.seq != last_seq or head.hash != prev:
        where = f"row {prev_id} (seq {last_seq})" if prev_id is not None else "no row"
        return count, ChainBreak(
            chain,
            prev_id,
            last_seq or None,
            f"the chain ends at {where} but its head records seq {head.seq}: "
            "rows were removed from the end, or the last row was rewritten",
        )
    return count, None


async def verify(engine: AsyncEngine) -> ChainReport:
    """Checks every chain from its first row to its head; names each chain's first break."""
    t, heads = audit_events, audit_chain_heads
    # Reads only, in autocommit on both backends: writers go on while a chain is checked.
    async with Door(engine, timeout_s=None).passage(readonly=True) as passage:
        conn = passage.connection
        # The heads first: each was moved in the transaction of its rows, so every row up
        # to a head's seq is committed and visible to the reads below.
        found = {row.chain: row for row in await conn.execute(select(heads))}
        unlinked = (
            await conn.execute(
                select(t.c.id, t.c.chain).where(t.c.seq.is_(None)).order_by(t.c.id).limit(1)
            )
        ).one_or_none()
        names = sorted(set(found) | set((await conn.scalars(select(t.c.chain).distinct())).all()))
        rows, breaks = 0, []
        if unlinked is not None:
            breaks.append(
                ChainBreak(unlinked.chain, unlinked.id, None, "it has no place in the chain")
            )
        for name in names:
            count, broken = await _check_chain(conn, name, found.get(name))
            rows += count
            if broken is not None:
                breaks.append(broken)
    return ChainReport(rows=rows, chains=len(names), breaks=tuple(breaks))
