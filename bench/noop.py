"""The no-op ceiling server: same grpc.aio runtime, no work behind the methods."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc


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
    print(f"serving on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main())
