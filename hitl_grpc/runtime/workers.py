"""HITL_WORKERS > 1: one supervisor and N serving processes on the one port.

The supervisor does what must happen once: it holds the gRPC port (and the
client-certificate port) for its workers, serves the metrics endpoint, brings the schema
up and creates the bootstrap admin. Then it starts N `hitl-grpc serve` workers. Each binds
the held address with SO_REUSEPORT, so the kernel spreads incoming connections over them,
and each has its own event reader, which PostgreSQL's NOTIFY wakes for every commit of
every worker (the reader's linger batches those wake-ups). A worker that dies is
restarted with a growing delay; SIGTERM or SIGINT is passed to every worker, which drain
as a single server does.

Each worker tells the supervisor it serves by writing a line on a socket pair the
supervisor keeps open; a worker whose supervisor is gone sees that socket close and
drains on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prometheus_client import Counter, Gauge, multiprocess, start_http_server

from hitl_grpc.config import Settings
from hitl_grpc.runtime.errors import StartupError
from hitl_grpc.runtime.metrics import workers_registry
from hitl_grpc.runtime.server import prepare_store

log = logging.getLogger("hitl_grpc.runtime.workers")

# A worker is `hitl-grpc serve` again, with the interpreter running the supervisor.
WORKER_COMMAND: Final = (sys.executable, "-m", "hitl_grpc.cli", "serve")
READY: Final = b"ready\n"
RESTART_BACKOFF_S: Final = 0.5
RESTART_BACKOFF_MAX_S: Final = 30.0
# A worker that served this long before it died is restarted after the first delay again.
STABLE_S: Final = 60.0
# Exit statuses of a worker that stopped as told.
CLEAN_EXITS: Final = frozenset({0, -signal.SIGTERM, -signal.SIGINT})


@dataclass
class Held:
    """A port kept for the workers: bound with SO_REUSEPORT, never listening, so it takes
    no connection itself while nothing but a socket of the same user with SO_REUSEPORT
    can bind it."""

    address: str
    sock: socket.socket


def hold(listen: str) -> Held:
    """Holds the port of `listen` (port 0: one the OS picks); StartupError if it is taken."""
    host, _, port = listen.rpartition(":")
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # Alone first: a port someone else holds, even with SO_REUSEPORT, is taken.
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(sockaddr)
            chosen = probe.getsockname()[1]
        held = socket.socket(family, kind, proto)
        try:
            # SO_REUSEPORT only: with SO_REUSEADDR too, a socket like the probe could
            # bind it beside us while it does not listen.
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            held.bind((sockaddr[0], chosen, *sockaddr[2:]))
        except OSError:
            held.close()
            raise
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from exc
    return Held(f"{host}:{chosen}", held)


@dataclass(frozen=True)
class Started:
    """What `serve` reports once every worker serves."""

    address: str
    mtls_address: str | None
    metrics_port: int | None
    generated_admin_password: str | None
    pids: tuple[int, ...]


async def _first(*events: asyncio.Event) -> None:
    """Waits until one of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class Supervisor:
    """Starts, watches, restarts and stops the workers."""

    def __init__(self, settings: Settings, *, stop_within_s: float) -> None:
        self._settings = settings
        # How long the workers have to drain and exit after SIGTERM before they are killed.
        self._stop_within_s = stop_within_s
        self._stopping = asyncio.Event()
        self._fatal: int | None = None
        self._failed = asyncio.Event()
        self._all_ready = asyncio.Event()
        self._first_ready = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._serving: set[int] = set()
        self._tasks: list[asyncio.Task[int]] = []
        self._held: list[Held] = []
        self._cleanup: list[Callable[[], None]] = []
        self._dir = tempfile.mkdtemp(prefix="hitl-metrics-")
        self._cleanup.append(lambda: shutil.rmtree(self._dir, ignore_errors=True))
        registry = workers_registry(self._dir)
        self._serving_gauge = Gauge(
            "hitl_workers_serving", "Worker processes serving now", registry=registry
        )
        self._restarts = Counter(
            "hitl_worker_restarts_total",
            "Workers started again after one exited",
            registry=registry,
        )
        self._registry = registry
        self._env: dict[str, str] = {}

    async def start(self, stop: asyncio.Event) -> Started | int:
        """Started, once every worker serves; else the exit status (a worker could not
        start: it said why), or 0 if `stop` came first. StartupError: the supervisor's
        own start failed (metrics port, gRPC port, database)."""
        settings = self._settings
        # In a single server's order: metrics first, so a taken port stops it before it
        # touches the database.
        metrics_port = self._serve_metrics()
        main = hold(settings.listen)
        self._held.append(main)
        mtls = hold(settings.mtls_listen) if settings.mtls_listen else None
        if mtls is not None:
            self._held.append(mtls)
        generated = await prepare_store(settings)
        self._env = {
            **os.environ,
            "HITL_LISTEN": main.address,
            "PROMETHEUS_MULTIPROC_DIR": self._dir,
            **({"HITL_MTLS_LISTEN": mtls.address} if mtls is not None else {}),
        }
        # The first worker alone, then the others: what would stop every worker (a
        # certificate, the database) is said once.
        self._tasks = [asyncio.create_task(self._keep(0), name="hitl-worker-0")]
        await _first(self._first_ready, self._failed, stop)
        if self._first_ready.is_set() and not stop.is_set():
            self._tasks += [
                asyncio.create_task(self._keep(index), name=f"hitl-worker-{index}")
                for index in range(1, settings.workers)
            ]
            await _first(self._all_ready, self._failed, stop)
        if self._fatal is not None:
            await self.stop()
            return self._fatal
        if not self._all_ready.is_set():
            return await self.stop()
        return Started(
            address=main.address,
            mtls_address=mtls.address if mtls is not None else None,
            metrics_port=metrics_port,
            generated_admin_password=generated,
            pids=tuple(p.pid for p in self._procs.values()),
        )

    async def stop(self) -> int:
        """SIGTERM to every worker; 0 once all have drained and exited cleanly, 1 if one
        had to be killed or had failed."""
        self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_within_s):
                codes = await asyncio.gather(*self._tasks)
        except TimeoutError:
            for index, proc in self._procs.items():
                if proc.returncode is None:
                    log.error(
                        "worker %d (pid %d) did not exit after SIGTERM: killed", index, proc.pid
                    )
                    proc.kill()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            return 1
        return 0 if all(code in CLEAN_EXITS for code in codes) else 1

    def close(self) -> None:
        """Releases the held ports, the metrics endpoint and the workers' sample files."""
        for held in self._held:
            held.sock.close()
        for step in reversed(self._cleanup):
            step()

    def _serve_metrics(self) -> int | None:
        listen = self._settings.metrics_listen
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        try:
            http, _thread = start_http_server(int(port), host.strip("[]"), registry=self._registry)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {listen}: {exc}") from exc
        self._cleanup.append(http.shutdown)
        return int(http.server_port)

    async def _spawn(
        self, index: int
    ) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.StreamWriter]:
        mine, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *WORKER_COMMAND,
                "--worker-index",
                str(index),
                "--worker-fd",
                str(theirs.fileno()),
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=mine)
        return proc, reader, writer

    async def _keep(self, index: int) -> int:
        """Runs worker `index` until the supervisor stops; its last exit status."""
        backoff = RESTART_BACKOFF_S
        served_once = False
        while True:
            proc, reader, writer = await self._spawn(index)
            self._procs[index] = proc
            if self._stopping.is_set():
                proc.send_signal(signal.SIGTERM)
            spawned = time.monotonic()
            try:
                ready = await reader.readline() == READY
                if ready:
                    served_once = True
                    self._serving.add(index)
                    self._serving_gauge.set(len(self._serving))
                    log.info(
                        "worker %d serving (pid %d)",
                        index,
                        proc.pid,
                        extra={"worker_pid": proc.pid},
                    )
                    self._first_ready.set()
                    if len(self._serving) == self._settings.workers:
                        self._all_ready.set()
                code = await proc.wait()
            finally:
                writer.close()
            self._serving.discard(index)
            self._serving_gauge.set(len(self._serving))
            multiprocess.mark_process_dead(proc.pid, self._dir)  # type: ignore[no-untyped-call]  # untyped upstream
            if self._stopping.is_set():
                return code
            if not served_once:
                # At the first start a worker that cannot serve stops them all: it has
                # said why (a port, the configuration, the database) on stderr.
                if code > 0:
                    self._fatal = code
                else:
                    print(
                        f"hitl-grpc: worker {index} ended by signal {-code} before serving",
                        file=sys.stderr,
                        flush=True,
                    )
                    self._fatal = 1
                self._failed.set()
                return code
            if time.monotonic() - spawned > STABLE_S:
                backoff = RESTART_BACKOFF_S
            log.warning(
                "worker %d (pid %d) exited with %s; restarting in %.1f s",
                index,
                proc.pid,
                code,
                backoff,
                extra={"worker_pid": proc.pid},
            )
            try:
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
                return code
            except TimeoutError:
                pass
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)
            self._restarts.inc()
