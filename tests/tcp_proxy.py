"""A TCP proxy on loopback that plays a bad network between a client and a daemon.

* ``cut=(lo, hi)``: each connection is aborted after a random number of
  client-to-server bytes in ``[lo, hi]`` (a cable pulled mid-request);
* ``rate``: client-to-server bytes a second, over all connections (a slow link);
* ``corrupt``: the first time these bytes pass (whole, in one read), one of them
  is flipped on the way (a bad router; later copies pass intact).

Counts ``connections``, ``cuts`` and ``corrupted``.  Runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import random
import time


class FlakyProxy:
    def __init__(self, upstream_port: int, *, cut: tuple[int, int] | None = None, rate: float | None = None,
                 corrupt: bytes | None = None, seed: int = 1) -> None:
        self.upstream_port = upstream_port
        self.cut = cut
        self.rate = rate
        self.corrupt = corrupt
        self.rng = random.Random(seed)
        self.connections = 0
        self.cuts = 0
        self.corrupted = 0
        self.sent = 0
        self._began = time.monotonic()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self.port = 0

    async def start(self) -> "FlakyProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for _ in range(3):  # connections accepted but not yet served run once, see _closing, and go
            await asyncio.sleep(0)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._closing:
            _drop(client_w)
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        self.connections += 1
        up_w = down = None
        try:
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:  # the daemon is down: the client sees a dropped connection
                return
            budget = self.rng.randint(*self.cut) if self.cut else None
            down = asyncio.create_task(self._pump(up_r, client_w))
            self._tasks.add(down)
            down.add_done_callback(self._tasks.discard)
            await self._upstream(client_r, up_w, budget)
        except (asyncio.CancelledError, OSError):
            pass  # closing, or the client went away
        finally:
            if up_w is not None:
                _drop(up_w)
            _drop(client_w)
            if down is not None:
                down.cancel()
            self._tasks.discard(task)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        budget: int | None) -> None:
        forwarded = 0
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if self.corrupt is not None and not self.corrupted and self.corrupt in data:
                at = data.index(self.corrupt) + len(self.corrupt) // 2
                data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
                self.corrupted += 1
            if budget is not None and forwarded + len(data) >= budget:
                writer.write(data[:budget - forwarded])
                await writer.drain()
                self.cuts += 1
                return
            forwarded += len(data)
            writer.write(data)
            await writer.drain()
            if self.rate:
                self.sent += len(data)
                ahead = self.sent / self.rate - (time.monotonic() - self._began)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _drop(writer)


def _drop(writer: asyncio.StreamWriter) -> None:
    """Reset the connection (no FIN handshake), and mark the writer closed."""
    writer.transport.abort()
    writer.close()
