"""A loopback TCP proxy that can lose a reply: the request arrives, its answer never does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

CHUNK = 65536


class ReplyEater:
    """Forwards 127.0.0.1:port to an upstream; after a marker goes up, nothing comes back."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._marker = b""
        # Set once a client->server chunk carried the marker; replies are held from then on.
        self.marker_sent = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    def swallow_replies_after(self, marker: bytes) -> None:
        """Holds every server->client byte once a request containing `marker` went up."""
        self._marker = marker
        self.marker_sent.clear()

    def cut(self) -> None:
        """Drops every open connection (the held reply is lost); new ones pass freely."""
        self._marker = b""
        self.marker_sent.clear()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        tail = b""
        try:
            while chunk := await reader.read(CHUNK):
                if upward and self._marker:
                    # The marker may straddle two reads.
                    if self._marker in tail + chunk:
                        self.marker_sent.set()
                    tail = chunk[-len(self._marker) :]
                if not upward and self.marker_sent.is_set():
                    continue
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, upward=True),
                self._pump(up_reader, writer, upward=False),
            )
        finally:
            self._writers.difference_update((writer, up_writer))

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._accept(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ReplyEater]:
        """Listening on an ephemeral loopback port until the block ends."""
        self._server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            self.cut()
            for task in list(self._tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
