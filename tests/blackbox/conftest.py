"""Fixtures: `hitl-grpc serve` on a fresh database of each backend, stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.blackbox.harness import Served

ServedFactory = Callable[..., Served]


@pytest.fixture
def make_served(database_url: str, tmp_path: Path) -> Iterator[ServedFactory]:
    """Starts servers on the test's database with extra HITL_* settings (keyword arguments).

    Each must survive the test and exit cleanly on SIGTERM after it.
    """
    started: list[Served] = []

    def start(**env: str) -> Served:
        server = Served.start(database_url, tmp_path, **env)
        started.append(server)
        return server

    try:
        yield start
    finally:
        # Every server is stopped (a failed stop has already ended its process); the first
        # failure is the one reported.
        failures: list[BaseException] = []
        for server in started:
            try:
                server.stop()
            except BaseException as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


@pytest.fixture
def served(make_served: ServedFactory) -> Served:
    """The test's own server process with default settings."""
    return make_served()
