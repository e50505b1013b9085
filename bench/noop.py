"""The no-op ceiling: a server on the same grpc.aio runtime with no work behind its methods.

`python -m bench.noop` serves it; `noop_server()` runs that in its own process for a bench.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import grpc

from bench.processes import SERVING, Address, bench_server

NOOP_UNARY: Final = "/bench.Noop/Call"
NOOP_STREAM: Final = "/bench.Noop/Stream"


@contextmanager
def noop_server() -> Iterator[Address]:
    """The ceiling's server in its own process; yields its address."""
    with bench_server("noop") as address:
        yield address


def noop_call(
    channel: grpc.aio.Channel, payload: bytes = b"x" * 64
) -> Callable[[], Awaitable[object]]:
    """A coroutine factory making one no-op unary call."""
    method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(NOOP_UNARY)

    async def call() -> object:
        return await method(payload, timeout=30)

    return call


async def _call(request: bytes, context: Any) -> bytes:
    return request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    count = int(request or b"1")
    for _ in range(count):
        yield b"x" * 64


async def main() -> None:
    """Serves /bench.Noop/Call and /bench.Noop/Stream on 127.0.0.1:0 until SIGTERM."""
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 4096)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Noop",
        {
            "Call": grpc.unary_unary_rpc_method_handler(_call),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{SERVING}127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
