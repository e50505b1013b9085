"""WatchPending fan-out: commit-to-delivery latency, events/s and memory per idle watcher.

Beside it, in the same run, a bare grpc.aio fan-out server (`python -m bench.watch
--bare`) that forwards each published message to every open stream: same runtime, same
message size, no database, no auth. Latency runs from the start of the call that causes
the event (SubmitDecision / Publish) to the moment each watcher has the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from bench.load import report
from bench.processes import (
    ADMIN_PASSWORD,
    BENCH_SECRET,
    SERVING,
    bench_server,
    fresh_postgres,
    serve_subprocess,
)
from tests.samples import sample_request, ts

WATCHER_COUNTS: Final = (1, 100, 1000)
EVENTS_PER_COUNT: Final = 40
BURST: Final = 200
CHANNELS: Final = 8
BARE_WATCH: Final = "/bench.Fanout/Watch"
BARE_PUBLISH: Final = "/bench.Fanout/Publish"


# -- the bare fan-out server ---------------------------------------------------------------


async def _bare_main() -> None:
    queues: set[asyncio.Queue[bytes]] = set()

    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(1024)
        queues.add(queue)
        try:
            yield b"ready"
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    async def publish(request: bytes, context: Any) -> bytes:
        for queue in queues:
            queue.put_nowait(request)
        return b""

    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 4096)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Fanout",
                {
                    "Watch": grpc.unary_stream_rpc_method_handler(watch),
                    "Publish": grpc.unary_unary_rpc_method_handler(publish),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{SERVING}127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


@contextmanager
def bare_server() -> Iterator[str]:
    """The ceiling's server in its own process."""
    with bench_server("watch", "--bare") as address:
        yield address


# -- measuring ------------------------------------------------------------------------------


def _rss_kib(port: int) -> int:
    """The RSS of our child process that serves `port` (found through /proc)."""
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    raise RuntimeError(f"no child process found for port {port}")


IDLE_STREAMS = 1000


async def _idle_rss_per_stream(
    port: int, open_stream: Callable[[int], AsyncIterable[Any]], is_ready: Callable[[Any], bool]
) -> float:
    """Server RSS growth per stream while IDLE_STREAMS streams sit open with nothing to send."""
    ready = 0
    all_ready = asyncio.Event()

    async def hold(i: int) -> None:
        nonlocal ready
        async for message in open_stream(i):
            if is_ready(message):
                ready += 1
                if ready == IDLE_STREAMS:
                    all_ready.set()

    before = _rss_kib(port)
    tasks = [asyncio.create_task(hold(i)) for i in range(IDLE_STREAMS)]
    try:
        await asyncio.wait_for(all_ready.wait(), 120)
        return (_rss_kib(port) - before) / IDLE_STREAMS
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Watchers:
    """N open streams; records when each one received each message key."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.waiters: dict[str, tuple[int, asyncio.Future[None]]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def expect(self, key: str, count: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.arrivals[key] = []
        self.waiters[key] = (count, future)
        return future

    def arrived(self, key: str) -> None:
        times = self.arrivals.get(key)
        if times is None:
            return
        times.append(time.perf_counter())
        count, future = self.waiters[key]
        if len(times) == count and not future.done():
            future.set_result(None)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _open(n: int, start: Callable[[int], Awaitable[None]]) -> None:
    for i in range(0, n, 50):
        await asyncio.gather(*(start(j) for j in range(i, min(n, i + 50))))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)] * 1000


async def _latency(
    watchers: Watchers, n: int, cause: Callable[[str], Awaitable[object]]
) -> list[float]:
    latencies: list[float] = []
    for _ in range(EVENTS_PER_COUNT):
        key = f"b-{uuid.uuid4().hex[:12]}"
        done = watchers.expect(key, n)
        started = time.perf_counter()
        await cause(key)
        await asyncio.wait_for(done, 60)
        latencies.extend(t - started for t in watchers.arrivals.pop(key))
    return latencies


async def _burst(watchers: Watchers, n: int, cause: Callable[[str], Awaitable[object]]) -> float:
    keys = [f"burst-{uuid.uuid4().hex[:12]}" for _ in range(BURST)]
    done = [watchers.expect(k, n) for k in keys]
    started = time.perf_counter()
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with sem:
            await cause(key)

    await asyncio.gather(*(one(k) for k in keys))
    await asyncio.wait_for(asyncio.gather(*done), 120)
    elapsed = time.perf_counter() - started
    for k in keys:
        watchers.arrivals.pop(k, None)
    return n * BURST / elapsed


def _request(key: str) -> decision_pb2.SubmitDecisionRequest:
    return sample_request(key, forensic_summary="s" * 300, detected_at=ts(datetime.now(UTC)))


async def _measure_service(address: str) -> dict[str, float]:
    results: dict[str, float] = {}
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    auth = auth_pb2_grpc.AuthServiceStub(channels[0])
    login = await auth.Login(
        auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
    )
    metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
    stubs = [decision_pb2_grpc.DecisionServiceStub(c) for c in channels]
    port = int(address.rsplit(":", 1)[1])

    async def cause(key: str) -> object:
        return await stubs[0].SubmitDecision(_request(key), metadata=metadata, timeout=30)

    # Idle watchers first, on an empty queue and a filter nothing matches: what a
    # registered, waiting dashboard costs, without any snapshot's allocations.
    results["idle_rss_kib"] = await _idle_rss_per_stream(
        port,
        lambda i: stubs[i % CHANNELS].WatchPending(
            decision_pb2.WatchPendingRequest(priorities=[decision_pb2.PRIORITY_LOW]),
            metadata=metadata,
        ),
        lambda reply: reply.HasField("snapshot_complete"),
    )

    for n in WATCHER_COUNTS:
        watchers = Watchers()
        live = 0
        ready = asyncio.Event()
        target = {"live": n}

        async def run(
            i: int,
            watchers: Watchers = watchers,
            target: dict[str, int] = target,
            ready: asyncio.Event = ready,
        ) -> None:
            nonlocal live
            call = stubs[i % CHANNELS].WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=metadata
            )
            async for reply in call:
                if reply.HasField("snapshot_complete"):
                    live += 1
                    if live == target["live"]:
                        ready.set()
                elif reply.HasField("added"):
                    watchers.arrived(reply.added.analysis_id)

        rss_before = _rss_kib(port)
        # Opened in groups, as dashboards arrive: a thousand snapshots at once would only
        # measure the connection pool.
        for first in range(0, n, 50):
            ready.clear()
            group = min(n, first + 50)
            target["live"] = group
            watchers.tasks += [asyncio.create_task(run(i)) for i in range(first, group)]
            await asyncio.wait_for(ready.wait(), 120)
        if n == max(WATCHER_COUNTS):
            results["rss_per_watcher_kib"] = (_rss_kib(port) - rss_before) / n
        lat = await _latency(watchers, n, cause)
        results[f"p50_{n}"], results[f"p99_{n}"] = _pct(lat, 0.5), _pct(lat, 0.99)
        if n == 100:
            results["events_per_s"] = await _burst(watchers, n, cause)
        await watchers.close()
    for c in channels:
        await c.close()
    return results


def _bare_watch(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(BARE_WATCH)


async def _measure_bare(address: str) -> dict[str, float]:
    results: dict[str, float] = {}
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    publish: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
    publish = channels[0].unary_unary(BARE_PUBLISH)
    port = int(address.rsplit(":", 1)[1])
    results["idle_rss_kib"] = await _idle_rss_per_stream(
        port,
        lambda i: _bare_watch(channels[i % CHANNELS])(b""),
        lambda message: message == b"ready",
    )
    # A message the size of a WatchPendingResponse carrying a decision.
    body = decision_pb2.WatchPendingResponse(cursor="v1:MTIzNDU2Ljc4OQ").SerializeToString()
    size_like = len(_request("x").SerializeToString()) + 200

    async def cause(key: str) -> object:
        return await publish(key.encode() + b"|" + b"x" * size_like + body, timeout=30)

    for n in WATCHER_COUNTS:
        watchers = Watchers()
        live = 0
        ready = asyncio.Event()

        async def run(
            i: int, watchers: Watchers = watchers, n: int = n, ready: asyncio.Event = ready
        ) -> None:
            nonlocal live
            call = _bare_watch(channels[i % CHANNELS])(b"")
            async for message in call:
                if message == b"ready":
                    live += 1
                    if live == n:
                        ready.set()
                else:
                    watchers.arrived(message.split(b"|", 1)[0].decode())

        watchers.tasks = [asyncio.create_task(run(i)) for i in range(n)]
        await asyncio.wait_for(ready.wait(), 120)
        lat = await _latency(watchers, n, cause)
        results[f"p50_{n}"], results[f"p99_{n}"] = _pct(lat, 0.5), _pct(lat, 0.99)
        if n == 100:
            results["events_per_s"] = await _burst(watchers, n, cause)
        await watchers.close()
    for c in channels:
        await c.close()
    return results


async def run() -> None:
    """Measures the service on PostgreSQL and the bare fan-out, and prints both."""
    with bare_server() as bare_address:
        bare = await _measure_bare(bare_address)
    name = f"hitl_bench_watch_{os.getpid()}"
    with fresh_postgres(name) as url:
        env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET}
        with serve_subprocess(env) as address:
            service = await _measure_service(address)
    for n in WATCHER_COUNTS:
        report(
            f"watch p50 commit->delivery, {n} watchers", service[f"p50_{n}"], bare[f"p50_{n}"], "ms"
        )
        report(
            f"watch p99 commit->delivery, {n} watchers", service[f"p99_{n}"], bare[f"p99_{n}"], "ms"
        )
    report(
        "watch events delivered/s (100 watchers)",
        service["events_per_s"],
        bare["events_per_s"],
        "ev/s",
    )
    report(
        "watch server RSS per idle watcher",
        service["idle_rss_kib"],
        bare["idle_rss_kib"],
        "KiB",
    )
    print(
        f"  idle watcher budget 20 KiB; while taking 250-item snapshots: "
        f"{service['rss_per_watcher_kib']:.1f} KiB per watcher"
    )
    print(f"p99 ratio at 1,000 watchers: {service['p99_1000'] / bare['p99_1000']:.2f} (budget 1.5)")


# -- stalled watchers: memory held per stream that stops reading --------------------------

STALLED_DECISIONS: Final = 150
STALLED_WATCHERS: Final = 8


def _large_request(n: int) -> decision_pb2.SubmitDecisionRequest:
    """A decision near every documented field limit (~240 KB)."""
    request = _request(f"large-{n:04d}-{uuid.uuid4().hex[:8]}")
    request.attributed_actor = "a" * 1000
    request.forensic_summary = "s" * 10_000
    request.iocs[:] = [f"{i:03d}" + "i" * 497 for i in range(200)]
    request.ttps[:] = [f"T{i:04d}" + "t" * 59 for i in range(20)]
    del request.recommended_actions[:]
    for i in range(50):
        request.recommended_actions.append(
            decision_pb2.Action(
                type=decision_pb2.ACTION_TYPE_CUSTOM,
                target=f"{i:03d}" + "h" * 497,
                description="d" * 2000,
            )
        )
    return request


def _settled_rss_kib(port: int) -> int:
    """The server's RSS once it stops moving (streams fill their buffers asynchronously)."""
    last, steady = _rss_kib(port), 0
    deadline = time.monotonic() + 60
    while steady < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = _rss_kib(port)
        steady = steady + 1 if abs(now - last) < 256 else 0
        last = now
    return last


def _stalled_rss_per_watcher(address: str) -> tuple[float, float]:
    """Sync clients, a channel each, that read one message of WatchPending and stop."""
    port = int(address.rsplit(":", 1)[1])
    with grpc.insecure_channel(address) as channel:
        login = auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
        )
        metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        for n in range(STALLED_DECISIONS):
            stub.SubmitDecision(_large_request(n), metadata=metadata, timeout=30)
        # One full snapshot first, so what is measured is what stalled streams hold.
        for reply in stub.WatchPending(decision_pb2.WatchPendingRequest(), metadata=metadata):
            if reply.HasField("snapshot_complete"):
                break
    before = _settled_rss_kib(port)
    channels = [grpc.insecure_channel(address) for _ in range(STALLED_WATCHERS)]
    streams = []
    try:
        for ch in channels:
            stream = decision_pb2_grpc.DecisionServiceStub(ch).WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=metadata
            )
            next(stream)  # the first item arrives; then this client stops reading
            streams.append(stream)
        held = _settled_rss_kib(port)
    finally:
        for stream in streams:
            stream.cancel()
        for ch in channels:
            ch.close()
    after = _settled_rss_kib(port)
    return (held - before) / STALLED_WATCHERS, (after - before) / STALLED_WATCHERS


def stalled(postgres: bool) -> None:
    """Prints the server's RSS per stalled watcher over 150 large decisions."""
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        if postgres:
            url = stack.enter_context(fresh_postgres(f"hitl_bench_stalled_{os.getpid()}"))
            env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET}
        address = stack.enter_context(serve_subprocess(env))
        held, left = _stalled_rss_per_watcher(address)
    backend = "PostgreSQL" if postgres else "SQLite"
    print(
        f"stalled watchers on {backend} "
        f"({STALLED_WATCHERS}, {STALLED_DECISIONS} decisions of ~240 KB): "
        f"{held / 1024:.1f} MiB RSS per watcher while stalled, "
        f"{left / 1024:.1f} MiB after they were cancelled"
    )


if __name__ == "__main__":
    if "--bare" in sys.argv:
        asyncio.run(_bare_main())
    elif "--stalled" in sys.argv:
        stalled(postgres="--postgres" in sys.argv)
