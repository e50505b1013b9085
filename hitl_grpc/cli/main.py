"""hitl-grpc: the human-in-the-loop decision service.

Run the server (serve, migrate, health), sign in (login, logout, whoami, mfa) and work over
its API (decisions, users, audit list, watch). `audit verify` checks the audit's hash
chain on the database itself. `users --direct` is the recovery mode: it edits
the database itself, with no server or sign-in.

Exit statuses of the commands over the API: 0 done, 1 refused by the server, 2 usage or
configuration, 3 server unavailable, 4 not signed in or session expired, 5 not allowed,
6 not found, 130 interrupted; `decisions follow` also exits 10 rejected, 11 expired.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hitl_grpc.cli import audit, audit_verify, decisions, login, users, users_api, watch
from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.runtime.errors import StartupError

# The server, the store and their dependencies load only for the commands that need them:
# a command over the API starts in a fraction of the time.

EXIT_CONFIG = 2
# Beyond the drain's own bound: if anything still holds the process (a thread, an exit
# handler), it exits anyway with every thread's stack on stderr.
EXIT_BACKSTOP_S = 5.0
# Allocations between collections of the youngest generation, in a serving process.
GC_YOUNG = 20_000


def _settings() -> Settings:
    try:
        return Settings.from_env(os.environ)
    except ConfigError as exc:
        raise SystemExit(_config_error(exc)) from None


def _config_error(exc: ConfigError) -> int:
    print(f"hitl-grpc: configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _print_admin_password(password: str | None) -> None:
    if password:
        print(f"created user 'admin' with password {password} (shown once: change it)", flush=True)


async def _supervise(settings: Settings) -> int:
    """HITL_WORKERS > 1: the supervisor of that many serving processes."""
    from hitl_grpc.runtime.server import SHUTDOWN_MARGIN_S
    from hitl_grpc.runtime.workers import Supervisor

    stop = _stop_on_signals()
    bound = settings.shutdown_grace_s + SHUTDOWN_MARGIN_S + EXIT_BACKSTOP_S
    supervisor = Supervisor(settings, stop_within_s=bound)
    try:
        started = await supervisor.start(stop)
        if isinstance(started, int):
            return started
        _print_admin_password(started.generated_admin_password)
        if started.metrics_port is not None and settings.metrics_listen:
            host = settings.metrics_listen.rpartition(":")[0]
            print(f"hitl-grpc metrics on {host}:{started.metrics_port}", flush=True)
        print(f"hitl-grpc serving on {started.address}", flush=True)
        if started.mtls_address is not None:
            print(f"hitl-grpc client certificates on {started.mtls_address}", flush=True)
        pids = " ".join(str(pid) for pid in started.pids)
        print(f"hitl-grpc workers: {len(started.pids)} (pids {pids})", flush=True)
        await stop.wait()
        print("hitl-grpc draining", flush=True)
        faulthandler.dump_traceback_later(bound + EXIT_BACKSTOP_S, exit=True)
        return await supervisor.stop()
    finally:
        supervisor.close()


def _watch_supervisor(control: socket.socket, stop: asyncio.Event) -> None:
    """A worker drains once its supervisor is gone (its end of the pair closed)."""
    control.setblocking(False)

    def readable() -> None:
        try:
            gone = not control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            gone = True
        if gone:
            asyncio.get_running_loop().remove_reader(control.fileno())
            stop.set()

    asyncio.get_running_loop().add_reader(control.fileno(), readable)


def _settle_heap() -> None:
    """Tunes the collector of a serving process once it has started.

    What startup built (modules, message classes, the schema) lives as long as the process,
    so it is frozen out of every later collection; and the youngest generation is collected
    every GC_YOUNG allocations rather than 700, so the short-lived objects of calls in
    flight are not promoted on and on into full collections. Measured with a thousand
    open watches: full collections of ~130 ms ran about every second, and the deliveries
    they held up were the slowest ones (commit-to-delivery p99 170 ms, then 55 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


async def _serve(settings: Settings, control: socket.socket | None = None) -> None:
    """Serves until SIGTERM or SIGINT; a worker (`control` set) also until its supervisor
    is gone, and reports to it instead of printing."""
    from hitl_grpc.runtime.server import SHUTDOWN_MARGIN_S, running_server
    from hitl_grpc.runtime.workers import READY

    stop = _stop_on_signals()
    async with running_server(settings, close_pool=False, worker=control is not None) as running:
        _settle_heap()
        if control is not None:
            control.sendall(READY)
            _watch_supervisor(control, stop)
            await stop.wait()
            faulthandler.dump_traceback_later(
                settings.shutdown_grace_s + SHUTDOWN_MARGIN_S + EXIT_BACKSTOP_S, exit=True
            )
            return
        _print_admin_password(running.generated_admin_password)
        if running.metrics_port is not None and settings.metrics_listen:
            # With port 0 this line is the only way to learn the port the OS chose.
            host = settings.metrics_listen.rpartition(":")[0]
            print(f"hitl-grpc metrics on {host}:{running.metrics_port}", flush=True)
        print(f"hitl-grpc serving on {running.address}", flush=True)
        if running.mtls_port is not None:
            host = settings.mtls_listen.rpartition(":")[0]
            print(f"hitl-grpc client certificates on {host}:{running.mtls_port}", flush=True)
        await stop.wait()
        print("hitl-grpc draining", flush=True)
        faulthandler.dump_traceback_later(
            settings.shutdown_grace_s + SHUTDOWN_MARGIN_S + EXIT_BACKSTOP_S, exit=True
        )


async def _migrate(settings: Settings) -> None:
    from hitl_grpc.store import schema
    from hitl_grpc.store.engine import make_engine

    engine = make_engine(settings.database_url, timeout_s=settings.db_timeout_s)
    try:
        before = await schema.state(engine)
        await schema.upgrade(engine)
        after = await schema.state(engine)
    finally:
        await engine.dispose()
    if before is schema.SchemaState.EMPTY:
        print(f"created the database schema (now {after.value})")
    elif before is schema.SchemaState.BEHIND:
        print(f"upgraded the database schema (now {after.value})")
    else:
        print(f"database schema is {after.value}: nothing to do")


def _health_channel(args: argparse.Namespace, address: str) -> grpc.aio.Channel:
    # A server with a certificate speaks TLS only; its own certificate is the trust anchor
    # unless told otherwise (a self-signed one, as in a container's HEALTHCHECK).
    ca_file = args.ca_file or os.environ.get("HITL_TLS_CERT_FILE")
    if not (args.tls or ca_file or args.cert_file):
        return grpc.aio.insecure_channel(address)
    roots = Path(ca_file).read_bytes() if ca_file else None
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    key, chain = (
        (Path(args.key_file).read_bytes(), Path(args.cert_file).read_bytes())
        if args.cert_file
        else (None, None)
    )
    creds = grpc.ssl_channel_credentials(roots, key, chain)
    return grpc.aio.secure_channel(address, creds, options=options)


async def _health(args: argparse.Namespace, address: str) -> bool:
    async with _health_channel(args, address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=args.service)
        reply = await stub.Check(request, timeout=args.timeout)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _run_health(args: argparse.Namespace) -> int:
    address = args.address or os.environ.get("HITL_LISTEN") or "127.0.0.1:50051"
    if bool(args.cert_file) != bool(args.key_file):
        print("hitl-grpc health: give --cert-file and --key-file together", file=sys.stderr)
        return EXIT_CONFIG
    try:
        ok = asyncio.run(_health(args, address))
    except grpc.aio.AioRpcError as exc:
        why = exc.details() or ""
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            why = f"the server has no health service named {args.service!r}"
        print(f"unhealthy: {exc.code().name}: {why}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unhealthy: cannot read a certificate file: {exc}", file=sys.stderr)
        return 1
    print("SERVING" if ok else "NOT_SERVING")
    return 0 if ok else 1


def _version() -> str:
    try:
        return metadata.version("hitl-grpc")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hitl-grpc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hitl-grpc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the server (configured by HITL_* variables)")
    # How a supervisor (HITL_WORKERS > 1) starts each of its workers.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="bring the database schema up to date")
    health = sub.add_parser("health", help="ask a server's gRPC health service; exit 0 if SERVING")
    health.add_argument("--address", help="host:port (default: HITL_LISTEN or 127.0.0.1:50051)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.add_argument(
        "--service",
        default="",
        help="health service name: liveness, readiness, a hitl.v1 service, or '' (default)",
    )
    health.add_argument(
        "--tls", action="store_true", help="speak TLS (on by itself when HITL_TLS_CERT_FILE is set)"
    )
    health.add_argument(
        "--ca-file", help="PEM roots to trust (default: HITL_TLS_CERT_FILE, else the system's)"
    )
    health.add_argument(
        "--server-name", help="the name the server's certificate must carry (default: the host)"
    )
    health.add_argument(
        "--cert-file", help="client certificate (PEM), for a listener that requires one"
    )
    health.add_argument("--key-file", help="the client certificate's key (PEM)")
    login.add_parsers(sub)
    decisions.add_parser(sub)
    users.add_parser(sub)
    audit_verify.add_parser(audit.add_parser(sub))
    watch.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script."""
    args = _parser().parse_args(argv)
    if args.command == "health":
        return _run_health(args)
    if args.command == "watch":
        return watch.run(args)
    if args.command in ("login", "logout", "whoami", "mfa"):
        return login.run(args)
    if args.command == "decisions":
        return decisions.run(args)
    if args.command == "audit" and args.audit_command == "list":
        return audit.run(args)
    if args.command == "users" and not args.direct:
        return users_api.run(args)
    from hitl_grpc.runtime.observability import configure_logging

    settings = _settings()
    worker = getattr(args, "worker_index", None)
    fields = {"worker": worker, "pid": os.getpid()} if worker is not None else None
    logs = configure_logging(settings.log_level, fields)
    # alembic, loaded on first use now, announces each plugin it sets up at INFO.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command in ("users", "migrate"):
        # A one-shot command speaks for itself; alembic's INFO lines are noise here.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    code, startup, config = 0, None, None
    try:
        if args.command == "users":
            code = users.run(args, settings)
        elif args.command == "audit" and args.audit_command == "verify":
            code = audit_verify.run(args, settings)
        elif args.command == "serve" and worker is not None:
            asyncio.run(_serve(settings, socket.socket(fileno=args.worker_fd)))
        elif args.command == "serve" and settings.workers > 1:
            code = asyncio.run(_supervise(settings))
        elif args.command == "serve":
            asyncio.run(_serve(settings))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
    except StartupError as exc:
        startup = exc
    except ConfigError as exc:  # a signing key file the settings name but that won't do
        config = exc
    finally:
        # Every queued log line is written before the process says more, or exits.
        logs.stop()
    if startup is not None:
        print(f"hitl-grpc: {startup}", file=sys.stderr)
        return 1
    if config is not None:
        return _config_error(config)
    if args.command == "serve":
        # Drained: every call has ended and every transaction is over. The kernel closes
        # the database sockets; interpreter teardown would finalize them on this thread,
        # past the shutdown bound.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
