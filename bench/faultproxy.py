"""A loopback TCP proxy in front of a database that injects the faults a network can.

Modes, switchable at any time from any thread:
- PASS: forwards both ways.
- LATENCY: forwards, each chunk held back `latency_s` first (+1 s by default).
- BLACKHOLE: keeps every connection open and drops every byte, both ways: a database
  that went silent (packets acknowledged, never answered).
- RESET: aborts every open connection with a TCP reset, and resets new ones at once.
- REFUSE: stops listening: new connections are refused; open ones stay as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Final

CHUNK: Final = 65536


class Mode(enum.Enum):
    """What the proxy does to traffic."""

    PASS = "pass"
    LATENCY = "latency"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    REFUSE = "refuse"


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout turns close() into a RST instead of a FIN.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Runs on its own event loop; `port` is where clients connect instead of upstream."""

    def __init__(self, upstream_host: str, upstream_port: int, *, latency_s: float = 1.0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.latency_s = latency_s
        self.mode = Mode.PASS
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, upstream_host: str, upstream_port: int) -> Iterator[FaultProxy]:
        """A proxy serving from a daemon thread until the context ends."""
        proxy = cls(upstream_host, upstream_port)
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        proxy._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(proxy._listen())
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        try:
            yield proxy
        finally:
            asyncio.run_coroutine_threadsafe(proxy._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def set_mode(self, mode: Mode) -> None:
        """Switches the fault; safe from any thread."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._apply(mode), self._loop).result(10)

    async def _apply(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.RESET:
            for writer in list(self._writers):
                _reset(writer)
        if mode is Mode.REFUSE and self._server is not None:
            self._server.close()
            self._server = None
        elif mode is not Mode.REFUSE and self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(CHUNK):
                if self.mode is Mode.BLACKHOLE:
                    continue
                if self.mode is Mode.LATENCY:
                    await asyncio.sleep(self.latency_s)  # the injected latency itself
                dst.write(data)
                await dst.drain()
        dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.RESET:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._writers.difference_update((writer, up_writer))
