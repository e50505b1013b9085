"""The processes a bench run measures: `hitl-grpc serve`, other servers, fresh databases."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from tests.children import SERVE, Lines

ADMIN_PASSWORD: Final = "bench-bootstrap-secret-0001"
PG_URL: Final = os.environ.get("HITL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")
BENCH_SECRET: Final = "bench-signing-key-" + "k" * 32
# What a server child prints once it serves, before its address.
SERVING: Final = "serving on "
HITL_SERVING: Final = "hitl-grpc " + SERVING
STARTUP_S: Final = 60.0
STOP_S: Final = 15.0
# This checkout, for children that import bench/ (`python -m bench.noop`).
ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Address(str):
    """A server child's address, which also knows the child's pid (for its CPU time)."""

    pid: int


@contextmanager
def child_server(
    args: Sequence[str], env: dict[str, str], cwd: str, serving: str = SERVING
) -> Iterator[Address]:
    """A server child in `cwd` (its stderr in stderr.log); yields the address it prints."""
    log_path = os.path.join(cwd, "stderr.log")
    with open(log_path, "w") as errors:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        assert proc.stdout is not None
        try:
            try:
                address = Lines(proc.stdout).after(serving, STARTUP_S)
            except TimeoutError as exc:
                address, problem = None, str(exc)
            else:
                problem = f"server exited early with {proc.poll()}"
            if address is None:
                errors.flush()
                with open(log_path) as log:
                    raise RuntimeError(f"{problem}:\n{log.read()[-2000:]}")
            found = Address(address)
            found.pid = proc.pid
            yield found
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def serve_subprocess(env: dict[str, str] | None = None) -> Iterator[Address]:
    """`hitl-grpc serve` on 127.0.0.1:0 over a fresh SQLite file unless env says otherwise."""
    with tempfile.TemporaryDirectory(prefix="hitl-bench-") as tmp:
        full = {
            **os.environ,
            "HITL_LISTEN": "127.0.0.1:0",
            "HITL_METRICS_LISTEN": "off",
            "HITL_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # One access-log line per RPC is real work; the bench measures the service path.
            "HITL_LOG_LEVEL": "WARNING",
            "HITL_DATABASE_URL": f"sqlite:///{tmp}/hitl.db",
            **(env or {}),
        }
        with child_server(SERVE, full, tmp, HITL_SERVING) as address:
            yield address


@contextmanager
def bench_server(module: str, *args: str) -> Iterator[Address]:
    """A server of bench/ itself (`python -m bench.<module>`) in its own process."""
    with tempfile.TemporaryDirectory(prefix=f"hitl-{module}-") as tmp:
        env = {**os.environ, "PYTHONPATH": ROOT}
        command = [SERVE[0], "-m", f"bench.{module}", *args]
        with child_server(command, env, tmp) as address:
            yield address


@contextmanager
def fresh_postgres(name: str) -> Iterator[str]:
    """A new PostgreSQL database for one bench run, dropped afterwards."""
    import psycopg

    with psycopg.connect(PG_URL + "postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL + name
    finally:
        with psycopg.connect(PG_URL + "postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
