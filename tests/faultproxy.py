"""A loopback TCP proxy in front of a database that can refuse, blackhole, reset or delay.

Tests (and the soak) point a server at the proxy instead of the database and switch
`mode` while it runs; every byte then goes through the event loop of whoever runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.engine import make_url

CHUNK: Final = 65536


class Fault(enum.Enum):
    """What the proxy does to the traffic."""

    NONE = "none"
    # New connections are refused (nothing listens); open ones are reset.
    REFUSE = "refuse"
    # Connections are accepted and every byte, both ways, is silently dropped; a side
    # that closes is not told to the other until the fault ends (as in a partition).
    BLACKHOLE = "blackhole"
    # Open connections are reset; new ones are accepted and reset at once.
    RESET = "reset"
    # Every chunk, both ways, is delivered `latency_s` late (in order).
    LATENCY = "latency"


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of FIN, as a crashed host or a firewall would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)


class FaultProxy:
    """Proxies 127.0.0.1:<port> to the upstream; `set_fault` changes what gets through."""

    def __init__(self, upstream_host: str, upstream_port: int, *, latency_s: float = 1.0) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.latency_s = latency_s
        self.fault = Fault.NONE
        self._open_path = asyncio.Event()
        self._open_path.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def set_fault(self, fault: Fault) -> None:
        """Switches the fault; REFUSE and RESET also break every open connection now."""
        self.fault = fault
        if fault is Fault.BLACKHOLE:
            self._open_path.clear()
        else:
            self._open_path.set()
        if fault in (Fault.REFUSE, Fault.RESET):
            for link in list(self._links):
                link.reset()
        if fault is Fault.REFUSE and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif fault is not Fault.REFUSE and self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver_late() -> None:
            while True:
                due, data = await late.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                dst.write(data)
                await dst.drain()

        delivery = asyncio.create_task(deliver_late())
        try:
            while data := await src.read(CHUNK):
                if self.fault is Fault.LATENCY:
                    late.put_nowait((loop.time() + self.latency_s, data))
                elif self.fault is Fault.NONE and late.empty():
                    dst.write(data)
                    await dst.drain()
                elif self.fault is Fault.NONE:
                    late.put_nowait((loop.time(), data))
            # A close is news like any other byte: a partition does not carry it either.
            await self._open_path.wait()
        except (ConnectionError, OSError):
            pass
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await delivery
            dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.fault is Fault.RESET:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            self._tasks.difference_update(pumps)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        """Listens on an ephemeral loopback port (yielded) until the block ends."""
        await self._listen()
        try:
            yield self.port
        finally:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.reset()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()


@contextlib.asynccontextmanager
async def proxied(database_url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A running proxy in front of `database_url`'s server, and the URL that goes through it."""
    url = make_url(database_url)
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    async with proxy.running() as port:
        yield proxy, url.set(port=port).render_as_string(hide_password=False)
