"""Builds and runs the grpc.aio server: store, auth, servicers, health, reflection, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio
from hitl.v1 import (
    access_pb2,
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    decision_pb2,
)
from prometheus_client import CollectorRegistry, start_http_server

from hitl_grpc import accounts, tasks
from hitl_grpc.accounts import AccountServices
from hitl_grpc.api.audit import AuditServicer
from hitl_grpc.api.auth import AuthServicer
from hitl_grpc.api.decisions import (
    FOLDED_READS,
    FOLDED_SUBMITS,
    DecisionServicer,
    add_decision_service,
)
from hitl_grpc.api.pages import RenderedDecisions
from hitl_grpc.api.watch import WatchServicer
from hitl_grpc.auth.interceptor import AuthInterceptor
from hitl_grpc.auth.policy import load_policies
from hitl_grpc.config import Settings
from hitl_grpc.domain import request_id
from hitl_grpc.domain.clock import Clock, SystemClock
from hitl_grpc.domain.decisions import DecisionOperations
from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.domain.lifecycle import ApprovalRules
from hitl_grpc.events.hub import EventHub
from hitl_grpc.runtime import reflection
from hitl_grpc.runtime.calls import CallLayer
from hitl_grpc.runtime.db_probe import DatabaseMonitor
from hitl_grpc.runtime.errors import StartupError
from hitl_grpc.runtime.metrics import Gauges, ServiceMetrics, build_version
from hitl_grpc.runtime.observability import AccessLog, RpcMetrics
from hitl_grpc.runtime.public_limits import public_limits
from hitl_grpc.runtime.sweeper import Sweeper
from hitl_grpc.runtime.tracing import Tracing
from hitl_grpc.runtime.webhooks import WebhookSender
from hitl_grpc.store import schema
from hitl_grpc.store.door import Door
from hitl_grpc.store.engine import Engine, make_engine
from hitl_grpc.store.hot import HotPath
from hitl_grpc.store.tracing import trace_statements
from hitl_grpc.store.uow import UnitOfWorkFactory
from hitl_grpc.store.webhooks import WebhookDeliveries

log = logging.getLogger("hitl_grpc.runtime.server")

# After the grace period: grpc cancels what is left, then the background tasks stop
# (each bounded by tasks.STOP_WITHIN_S, all at once), then the pool closes.
CANCEL_WITHIN_S: Final = 1.0
DISPOSE_WITHIN_S: Final = 1.0
SHUTDOWN_MARGIN_S: Final = CANCEL_WITHIN_S + tasks.STOP_WITHIN_S + DISPOSE_WITHIN_S

SERVICE_NAMES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)
# Health service names for orchestrators. Liveness: the process serves (a database
# outage never gets a replica restarted). Readiness, like "" and each service's own name:
# the database answers and the replica is not draining.
LIVENESS: Final = "liveness"
READINESS: Final = "readiness"
CONTRACT_FILES = (
    access_pb2.DESCRIPTOR,
    auth_pb2.DESCRIPTOR,
    decision_pb2.DESCRIPTOR,
    audit_pb2.DESCRIPTOR,
)


# Connections of the hot path's own pool (store/hot.py), beside the engine's.
HOT_POOL_SIZE: Final = 10


@dataclass
class RunningServer:
    """A started server and its parts: the CLI reports from it, tests drive the parts."""

    settings: Settings
    address: str
    port: int
    engine: Engine
    door: Door
    uow: UnitOfWorkFactory
    accounts: AccountServices
    clock: Clock
    health: aio.HealthServicer
    hub: EventHub
    sweeper: Sweeper
    db_monitor: DatabaseMonitor
    deliveries: WebhookDeliveries
    # None while no webhook URL is configured.
    webhooks: WebhookSender | None = None
    generated_admin_password: str | None = None
    # The hot path's statements (PostgreSQL, untraced); None where every call uses the engine.
    hot: HotPath | None = None
    # The event reader's own statements of the hot path (None with `hot`).
    reader: HotPath | None = None
    # The serialized decisions pages are put together from.
    rendered: RenderedDecisions | None = None
    metrics_port: int | None = None
    # The client-certificate listener's port, when HITL_MTLS_LISTEN sets one apart.
    mtls_port: int | None = None


async def open_store(settings: Settings, *, create: bool = True) -> Door:
    """The door to a schema that is current, under the settings' database deadline.

    An empty database is migrated when `create`.
    """
    engine = make_engine(settings.database_url, timeout_s=settings.db_timeout_s)
    try:
        async with asyncio.timeout(settings.db_timeout_s):
            state = await schema.state(engine)
        if state is schema.SchemaState.EMPTY and create:
            await schema.upgrade(engine)
        elif state is schema.SchemaState.BEHIND:
            raise StartupError("database schema is behind this build: run 'hitl-grpc migrate'")
        elif state is schema.SchemaState.UNKNOWN:
            raise StartupError("database schema is newer than this build: upgrade hitl-grpc")
        elif state is schema.SchemaState.EMPTY:
            raise StartupError("database has no schema: run 'hitl-grpc migrate'")
    except StartupError:
        await engine.dispose()
        raise
    except Exception as exc:
        await engine.dispose()
        raise StartupError(
            f"cannot open database: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    return Door(engine, timeout_s=settings.db_timeout_s)


def hashing_pool() -> ThreadPoolExecutor:
    """The threads password hashing runs on, off the event loop: one per core."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="hash")


def _server_options(settings: Settings, *, shared_port: bool) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Two servers must never silently share one port: only the workers of one
        # supervisor do, which holds the port for them (runtime/workers.py).
        ("grpc.so_reuseport", 1 if shared_port else 0),
    ]


def _credentials(settings: Settings, *, client_certificates: bool) -> grpc.ServerCredentials:
    assert settings.tls_cert_file and settings.tls_key_file
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    if not client_certificates:
        return grpc.ssl_server_credentials([pair])
    assert settings.tls_client_ca_file is not None
    # grpc's Python API can require and verify a client certificate, or not ask for one:
    # it has no "verify one if offered". Hence a listener of its own for machines.
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=settings.tls_client_ca_file.read_bytes(),
        require_client_auth=True,
    )


def _bind(server: grpc.aio.Server, settings: Settings) -> tuple[int, int | None]:
    """The main port, and the client-certificate port if that is a listener of its own."""
    bound: list[int] = []
    try:
        if settings.tls_cert_file is None:
            return server.add_insecure_port(settings.listen), None
        main_requires_certs = bool(settings.tls_client_ca_file) and not settings.mtls_listen
        creds = _credentials(settings, client_certificates=main_requires_certs)
        bound.append(server.add_secure_port(settings.listen, creds))
        if not settings.mtls_listen:
            return bound[0], None
        mtls = _credentials(settings, client_certificates=True)
        return bound[0], server.add_secure_port(settings.mtls_listen, mtls)
    except RuntimeError as exc:
        where = settings.mtls_listen if bound else settings.listen
        raise StartupError(f"cannot listen on {where}: {exc}") from exc


@asynccontextmanager
async def running_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    close_pool: bool = True,
    hub_class: type[EventHub] = EventHub,
    monitor_class: type[DatabaseMonitor] = DatabaseMonitor,
    worker: bool = False,
) -> AsyncIterator[RunningServer]:
    """A started server; leaving the context drains it and releases everything.

    `close_pool=False` leaves the database pool to the process's exit (`serve`, which
    exits at once): closing PostgreSQL connections runs synchronously on the loop, and
    was seen to stall an exiting process past its shutdown bound. `hub_class` and
    `monitor_class` build the event reader and the database probe, so that a caller can
    observe them through subclasses. A `worker` (HITL_WORKERS > 1) shares its ports with
    the other workers, leaves the bootstrap admin and the metrics endpoint to its
    supervisor, and writes its samples where the supervisor reads them.
    """
    clock = clock or SystemClock()
    async with AsyncExitStack() as stack:
        # Metrics first: an instance that cannot bind them stops before it touches the
        # database (and before it would create, and print, a bootstrap admin).
        registry = CollectorRegistry()
        service_metrics = ServiceMetrics(registry)
        metrics_port = None if worker else _serve_metrics(settings, registry, stack)
        door = await open_store(settings)
        engine = door.engine
        if close_pool:
            stack.push_async_callback(_dispose, engine)
        tracing = None
        if settings.otlp_endpoint:
            tracing = Tracing(settings.otlp_endpoint, version=build_version())
            stack.push_async_callback(tracing.close)
            trace_statements(engine, tracing.tracer)
        hot = reader = None
        if door.postgres and tracing is None:
            # Traced, every statement goes through SQLAlchemy, which gives each its span.
            hot = HotPath(engine.url, timeout_s=settings.db_timeout_s, max_size=HOT_POOL_SIZE)
            # The event reader's reads on a connection of their own: a reader retrying
            # through an outage never takes the calls' connections, nor they its.
            reader = HotPath(engine.url, timeout_s=settings.db_timeout_s, max_size=1)
            for pool in (hot, reader):
                await pool.open()
                # Always closed: its workers would go on reconnecting after the server is gone.
                stack.push_async_callback(pool.close, DISPOSE_WITHIN_S)
        # One reader of the event log per process, fanning out to every local watcher.
        hub = hub_class(
            door,
            clock,
            queue_size=settings.watch_queue_size,
            queue_bytes=settings.watch_queue_bytes,
            page_bytes=settings.watch_page_bytes,
            catchup_s=settings.watch_catchup_s,
            retention=settings.event_retention,
            prune_interval_s=settings.sweep_interval_s,
            listen_check_s=settings.db_check_interval_s,
            wake_linger_s=settings.wake_linger_s,
            on_fan_out=service_metrics.fanned_out,
            on_cut_off=service_metrics.cut_offs.inc,
            on_read=service_metrics.event_reads.inc,
            hot_new_events=reader.read_new if reader is not None else None,
        )
        if hot is not None:
            hot.wake_on_commit(hub.wake)
        uow = UnitOfWorkFactory(
            door,
            after_commit=hub.wake,
            webhook_urls=settings.webhook_urls,
            group_commit_max=settings.group_commit_max if settings.group_commit_on else 0,
        )
        # Closed after the hub (pushed below, so run first) and after the gRPC server's drain.
        stack.push_async_callback(uow.close)
        await hub.start()
        stack.push_async_callback(hub.close)
        # A critical submit also queues webhooks, which the one-statement submit does not.
        hot_submits = hot if not settings.webhook_urls else None

        cpu_pool = hashing_pool()
        stack.callback(cpu_pool.shutdown, wait=False, cancel_futures=True)
        services = accounts.build(
            settings,
            uow,
            clock,
            cpu_pool,
            on_sign_in=service_metrics.signed_in,
            on_lockout=service_metrics.locked_out,
            hot=hot,
        )
        generated = None if worker else await _bootstrap(settings, services)

        server = grpc.aio.server(
            interceptors=[
                CallLayer(
                    AccessLog(RpcMetrics(registry), sample=settings.access_log_sample),
                    AuthInterceptor(
                        load_policies(CONTRACT_FILES),
                        services.sessions.authenticate,
                        reauth_s=settings.stream_reauth_interval_s,
                        authenticate_certificate=(
                            services.sessions.authenticate_certificate
                            if settings.tls_client_ca_file
                            else None
                        ),
                        defer=services.sessions.deferred,
                        folded=(FOLDED_READS if hot is not None else frozenset())
                        | (FOLDED_SUBMITS if hot_submits is not None else frozenset()),
                    ),
                    limits=public_limits(
                        settings, load_policies(CONTRACT_FILES), uow, services.trail, clock
                    ),
                    tracer=tracing.tracer if tracing else None,
                )
            ],
            options=_server_options(settings, shared_port=worker),
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(
                services.sign_in, services.sessions, services.profile, services.mfa, services.users
            ),
            server,
        )
        decisions = DecisionOperations(
            uow,
            claim_lease=settings.claim_lease,
            sla=settings.sla,
            rules=ApprovalRules(settings.approvals_required),
            step_up_actions=settings.step_up_actions,
            step_up=services.step_up,
            hot=hot,
        )
        watch = WatchServicer(
            hub,
            heartbeat_s=settings.heartbeat_s,
            renew_leases=lambda principal: decisions.renew_held(by=principal),
        )
        decision_servicer = DecisionServicer(
            decisions,
            watch,
            db_timeout_s=settings.db_timeout_s,
            max_message_bytes=settings.max_message_bytes,
        )
        add_decision_service(decision_servicer, server)
        deliveries = WebhookDeliveries(door)
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(services.trail, deliveries), server
        )
        health = aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable((*SERVICE_NAMES, "grpc.health.v1.Health"), server)
        port, mtls_port = _bind(server, settings)

        await server.start()
        for name in ("", LIVENESS, READINESS, *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        sweeper = Sweeper(
            decisions, interval_s=settings.sweep_interval_s, on_report=service_metrics.swept
        )
        sweeper.start()
        stack.push_async_callback(sweeper.stop)
        db_monitor = monitor_class(
            door,
            health,
            ("", READINESS, *SERVICE_NAMES),
            interval_s=settings.db_check_interval_s,
            on_probe=service_metrics.probed,
        )
        db_monitor.start()
        stack.push_async_callback(db_monitor.stop)
        webhooks = _webhook_sender(settings, deliveries)
        if webhooks is not None:
            webhooks.start()
            stack.push_async_callback(webhooks.stop)
        gauges = Gauges(service_metrics, decisions, hub, door, interval_s=settings.sweep_interval_s)
        if metrics_port is not None or worker:  # nobody could read them otherwise
            gauges.start()
            stack.push_async_callback(gauges.stop)
        host = settings.listen.rpartition(":")[0]
        running = RunningServer(
            settings=settings,
            address=f"{host}:{port}",
            port=port,
            engine=engine,
            door=door,
            uow=uow,
            accounts=services,
            clock=clock,
            health=health,
            hub=hub,
            sweeper=sweeper,
            db_monitor=db_monitor,
            deliveries=deliveries,
            webhooks=webhooks,
            generated_admin_password=generated,
            hot=hot,
            reader=reader,
            rendered=decision_servicer.rendered,
            metrics_port=metrics_port,
            mtls_port=mtls_port,
        )
        try:
            yield running
        finally:
            await _drain(server, health, hub, settings.shutdown_grace_s)
            await asyncio.gather(
                hub.close(),
                sweeper.stop(),
                db_monitor.stop(),
                gauges.stop(),
                *([webhooks.stop()] if webhooks is not None else []),
            )


async def _bootstrap(settings: Settings, services: AccountServices) -> str | None:
    """Creates `admin` on an empty database; its password if it was generated."""
    try:
        # No call: the audit row of a bootstrap admin carries an id of the start-up.
        with request_id.bound(f"startup-{uuid.uuid4().hex}"):
            return await services.users.bootstrap_admin(
                settings.bootstrap_admin_password, may_generate=not settings.production
            )
    except InvalidField as exc:
        raise StartupError(f"HITL_BOOTSTRAP_ADMIN_PASSWORD: {exc.message}") from None


async def prepare_store(settings: Settings) -> str | None:
    """What a supervisor does once before its workers start: the schema (created on an
    empty database, else checked) and the bootstrap admin. Returns the admin's password
    if it was generated."""
    door = await open_store(settings)
    cpu_pool = hashing_pool()
    try:
        uow = UnitOfWorkFactory(door)
        services = accounts.build(settings, uow, SystemClock(), cpu_pool)
        return await _bootstrap(settings, services)
    finally:
        cpu_pool.shutdown(wait=False, cancel_futures=True)
        await _dispose(door.engine)


def _webhook_sender(settings: Settings, deliveries: WebhookDeliveries) -> WebhookSender | None:
    if not settings.webhook_urls:
        return None
    assert settings.webhook_secret is not None, "Settings.from_env requires it with URLs"
    return WebhookSender(
        deliveries,
        secret=settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_s=settings.webhook_backoff_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        poll_s=settings.webhook_poll_s,
    )


def _serve_metrics(
    settings: Settings, registry: CollectorRegistry, stack: AsyncExitStack
) -> int | None:
    if not settings.metrics_listen:
        return None
    host, _, port = settings.metrics_listen.rpartition(":")
    try:
        http, _thread = start_http_server(int(port), host.strip("[]"), registry=registry)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {settings.metrics_listen}: {exc}") from exc
    stack.callback(http.shutdown)
    return int(http.server_port)


async def _drain(
    server: grpc.aio.Server, health: aio.HealthServicer, hub: EventHub, grace_s: float
) -> None:
    """Stops serving within the grace period plus CANCEL_WITHIN_S, whatever the database does."""
    await health.enter_graceful_shutdown()
    stopping = asyncio.create_task(server.stop(grace_s), name="hitl-grpc-stop")
    # The stop task's first step closes the listeners and sends GOAWAY; it runs before
    # this task resumes. Only then do watches end, so a client that reconnects at once
    # is refused here and goes to another replica, instead of being accepted again on
    # this connection and cut at the end of the grace period.
    await asyncio.sleep(0)
    hub.end_watches()
    try:
        async with asyncio.timeout(grace_s + CANCEL_WITHIN_S):
            await asyncio.shield(stopping)
    except TimeoutError:
        log.error("grpc calls still running %.1f s after the grace period", CANCEL_WITHIN_S)


async def _dispose(engine: Engine) -> None:
    try:
        async with asyncio.timeout(DISPOSE_WITHIN_S):
            await engine.dispose()
    except TimeoutError:
        log.error("closing the database pool took over %.1f s; left to the exit", DISPOSE_WITHIN_S)
