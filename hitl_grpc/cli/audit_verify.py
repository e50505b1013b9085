"""`hitl-grpc audit verify`: checks the tamper-evident audit chain on the configured database.

Database-direct, like `users`: it reads HITL_DATABASE_URL and needs no server. Exit 0 when
every chain checks out, 1 naming the first broken row of each broken chain, 2 when the
database cannot be checked (unreachable, or a schema other than this build's).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from hitl_grpc.config import Settings
from hitl_grpc.domain.errors import DomainError
from hitl_grpc.runtime.errors import StartupError

if TYPE_CHECKING:
    from hitl_grpc.store import audit_chain

EXIT_BROKEN = 1
EXIT_UNCHECKED = 2


def add_parser(audit_commands: Any) -> None:
    """Adds `verify` to the `audit` group's subcommands."""
    audit_commands.add_parser(
        "verify",
        help="check the audit chain on the configured database; exit 1 naming the first broken row",
    )


async def _verify(settings: Settings) -> audit_chain.ChainReport:
    from hitl_grpc.runtime.server import open_store
    from hitl_grpc.store import audit_chain

    door = await open_store(settings, create=False)
    try:
        return await audit_chain.verify(door.engine)
    finally:
        await door.engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs `audit verify`: 0 intact, 1 broken, 2 not checked."""
    try:
        report = asyncio.run(_verify(settings))
    except StartupError as exc:
        print(f"hitl-grpc audit verify: {exc}", file=sys.stderr)
        return EXIT_UNCHECKED
    except DomainError as exc:  # the database went away or stalled while reading
        print(f"hitl-grpc audit verify: {exc.message}", file=sys.stderr)
        return EXIT_UNCHECKED
    for broken in report.breaks:
        row = f"row {broken.row_id}" if broken.row_id is not None else "no row"
        seq = f" (seq {broken.seq})" if broken.seq is not None else ""
        print(f"audit chain {broken.chain!r} broken at {row}{seq}: {broken.reason}")
    if not report.ok:
        return EXIT_BROKEN
    print(f"audit chain intact: {report.rows} rows in {report.chains} chain(s)")
    return 0
