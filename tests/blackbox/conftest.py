"""The `served` fixture: `hitl-grpc serve` on a fresh database of each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.blackbox.harness import Served


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """The test's own server process; it must survive the test and exit cleanly on SIGTERM."""
    server = Served.start(database_url, tmp_path)
    try:
        yield server
    finally:
        server.stop()
