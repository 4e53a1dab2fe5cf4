"""Connection hygiene: how long a slow, idle, stalled or greedy client may hold a connection.

The rules (each a setting, nginx's defaults; one guard per served app):

* **Request head** (``header_timeout``): a connection must deliver a complete request
  head within this, counted from accept for its first request and from the first byte
  of each later one.  A slowloris that trickles header lines is closed when it runs out.
* **Idle keep-alive** (``keepalive_timeout``): between requests a connection may idle
  this long; aiohttp's own keep-alive timer does it (re-armed after every answer).  When
  it fires while a head is being received it stands down, so the head rule alone
  applies then.
* **Request body** (``upload_min_rate`` over ``upload_rate_window``): while a body is
  being received, each window must bring at least rate x window bytes, unless the
  daemon itself paused reading (a busy disk is not the client's fault; the window
  restarts).  A slower connection is cut: the handler's read fails with
  ConnectionResetError, and the object store removes the upload's temp file as for any
  failed upload (the request's own ``finally``), before the handler returns.
* **Sending** (``send_timeout``): while bytes wait to go out (asyncio's buffer or the
  kernel's send queue, ``SIOCOUTQ``) and the peer acknowledges none of them
  (``TCP_INFO`` bytes_acked) for this long, the connection is aborted.  Read from the
  socket, so downloads sent with sendfile (no protocol callback while the kernel
  copies) are covered too.  Abort, never close: close waits for the buffer to drain,
  the one thing that will not happen.
* **Cap** (``max_connections``): the factory refuses a connection beyond the cap with a
  fixed ``503`` written at once, then a FIN; what the client sends is read and dropped
  for at most ``REFUSE_LINGER`` seconds, so the close is not a reset that could destroy
  the 503 before the client reads it.  Connections already served are not touched.

Who waits: nobody.  A head has its own timer (so a slowloris's connections expire
spread out as they came, each in a short callback); one sweep task checks the body
and send rules of every connection about four times per shortest timeout (at most
once a second, yielding every ``SWEEP_BATCH`` connections).  Counters are exported on
/metrics.

This leans on aiohttp's ``RequestHandler`` internals (read from aiohttp 3.14's
``web_protocol.py``): ``_messages`` (parsed heads waiting for the handler task),
``_request_in_progress``, ``_keepalive_handle`` and ``_process_keepalive``, and the
base protocol's ``_reading_paused``.  ``tests/reliability/test_hostile_clients.py`` exercises every rule
against a real daemon, so an aiohttp upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import socket
import struct
import termios
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from storaged.config import Config

log = logging.getLogger("storaged.http")

REFUSE_LINGER = 1.0
SWEEP_BATCH = 100
REASONS = ("header_timeout", "keepalive_timeout", "slow_upload", "send_timeout")
_TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info
_REFUSAL_BODY = json.dumps({"error_message": "too many connections: try again later"}).encode()
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n"
           + _REFUSAL_BODY)


@dataclass
class ConnectionStats:
    opened: int = 0
    refused: int = 0
    closed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


class ConnectionGuard:
    """The connections of one served app, their deadlines, and the protocol factory that admits them."""

    def __init__(self, config: Config) -> None:
        self.header_timeout = config.header_timeout
        self.min_rate = config.upload_min_rate
        self.rate_window = config.upload_rate_window
        self.send_timeout = config.send_timeout
        self.max_connections = config.max_connections
        self.stats = ConnectionStats()
        self.connections: set[GuardedHandler] = set()
        self._sweeper: asyncio.Task | None = None
        shortest = min(t for t in (config.upload_rate_window, config.send_timeout,
                                   config.keepalive_timeout, 4.0) if t > 0)
        self.interval = min(1.0, max(0.05, shortest / 4))

    def factory(self, server: web.Server):
        """The protocol factory for ``loop.create_server``: a guarded handler, or a refusal past the cap."""
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            if self.max_connections and len(self.connections) >= self.max_connections:
                self.stats.refused += 1
                return _Refusal()
            handler = GuardedHandler(self, server, loop=loop, **server._kwargs)
            self.connections.add(handler)
            self.stats.opened += 1
            return handler

        return make

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="connection-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            for n, conn in enumerate(list(self.connections), 1):
                reason = conn.overdue(now)
                if reason is not None:
                    self.stats.closed[reason] += 1
                    log.debug("closing %s: %s", conn.peer, reason)
                    conn.cut(reason)
                if n % SWEEP_BATCH == 0:
                    await asyncio.sleep(0)  # a sweep through thousands of connections lets requests in


class GuardedHandler(RequestHandler):
    """aiohttp's request handler plus the head, body and send deadlines the guard sweeps."""

    def __init__(self, guard: ConnectionGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.peer = "?"
        self.head_deadline: float | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.body: Any = None  # the payload of the request whose body is being received
        self.body_bytes = 0
        self.window_start = 0.0
        self.sock: socket.socket | None = None
        self.acked = -1
        self.send_progress = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head(self._loop.time())
        self._arm_head()
        self._stop_idle_timer()  # the first request is under the head rule from accept
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        raw = transport.get_extra_info("socket")
        self.sock = raw if raw is not None and raw.family in (socket.AF_INET, socket.AF_INET6) else None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.connections.discard(self)
        self.body = None
        self._disarm_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self._loop.time()
        in_body = self.body is not None and not self.body.is_eof()
        if in_body:
            self.body_bytes += len(data)
        elif data and self.head_deadline is None:
            self._start_head(now)  # a new head begins: idle is over (the idle timer stands down, below)
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) > queued:  # at least one head completed
            self._disarm_head()
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self.body, self.body_bytes, self.window_start = payload, 0, now
        elif self.head_deadline is not None and self.head_timer is None:
            self._arm_head()  # the head goes on past this read: now it needs its timer

    def _start_head(self, now: float) -> None:
        # The deadline counts from the head's first byte; its timer is armed only when the head
        # does not arrive whole in that read (the common case costs no timer).
        if self.guard.header_timeout > 0:
            self.head_deadline = now + self.guard.header_timeout

    def _arm_head(self) -> None:
        # A timer per head, not the sweep: heads of a slowloris expire spread out as they were
        # opened, each its own short callback, instead of thousands in one sweep.
        if self.head_deadline is not None:
            self.head_timer = self._loop.call_at(self.head_deadline, self._head_expired)

    def _disarm_head(self) -> None:
        self.head_deadline = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_expired(self) -> None:
        self.head_timer = None
        if self.transport is not None and self.head_deadline is not None:
            self.guard.stats.closed["header_timeout"] += 1
            log.debug("closing %s: header_timeout", self.peer)
            self.cut("header_timeout")

    def _stop_idle_timer(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def _process_keepalive(self) -> None:
        if self.head_deadline is not None:
            # A head is arriving: the head rule alone applies.  aiohttp arms its idle timer again after
            # the answer; leaving it armed between requests (instead of cancelling it at every head)
            # spares a timer per request.
            self._keepalive_handle = None
            return
        was_open = not self._force_close
        super()._process_keepalive()
        if was_open and self._force_close:
            self.guard.stats.closed["keepalive_timeout"] += 1

    def overdue(self, now: float) -> str | None:
        """The rule this connection broke by ``now``, if any."""
        if self.transport is None:
            return None
        guard = self.guard
        if self.body is not None:
            if self.body.is_eof():
                self.body = None
            elif self._reading_paused or now - self.window_start < guard.rate_window or guard.min_rate <= 0:
                if self._reading_paused:
                    self.window_start, self.body_bytes = now, 0
            elif self.body_bytes < guard.min_rate * guard.rate_window:
                return "slow_upload"
            else:
                self.window_start, self.body_bytes = now, 0
        if guard.send_timeout > 0 and (self._request_in_progress or self.transport.get_write_buffer_size()):
            if self._send_stalled(now):
                return "send_timeout"
        else:
            self.acked = -1
        return None

    def _send_stalled(self, now: float) -> bool:
        pending = self.transport.get_write_buffer_size() if self.transport is not None else 0
        acked = 0
        if self.sock is not None:
            try:
                pending += struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
                info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
                acked = struct.unpack_from("Q", info, _TCPI_BYTES_ACKED)[0]
            except OSError:
                return False
        if pending == 0 or acked != self.acked:
            self.acked, self.send_progress = acked, now
            return False
        return now - self.send_progress >= self.guard.send_timeout

    def cut(self, reason: str) -> None:
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()  # close() would wait for a send buffer that may never drain
        if reason == "send_timeout" and self._task_handler is not None:
            # A response sent with loop.sendfile() waits on the socket's writability, which a closed
            # socket never signals: cancel the handler so it ends (and its file is closed) now.
            self._task_handler.cancel()


class _Refusal(asyncio.Protocol):
    """A connection past the cap: a 503 at once, a FIN, its bytes dropped, closed within REFUSE_LINGER."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client is done: close now

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through the guard (``BaseSite``'s extension point: name + start)."""

    def __init__(self, runner: web.AppRunner, guard: ConnectionGuard, host: str, port: int,
                 sock: socket.socket | None = None) -> None:
        super().__init__(runner, backlog=511)  # nginx's listen backlog
        self.guard, self.host, self.port = guard, host, port
        self.sock = sock  # already bound (``storaged serve`` binds before starting anything)

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await loop.create_server(self.guard.factory(server), sock=self.sock,
                                                    backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                self.guard.factory(server), self.host, self.port, backlog=self._backlog, reuse_address=True)


class Collector:
    """/metrics: connections held, refused and closed by rule; requests in flight; token guesses refused."""

    def __init__(self, guard: ConnectionGuard, auth: Any, inflight: Any) -> None:
        self.guard, self.auth, self.inflight = guard, auth, inflight

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        guard, stats, auth = self.guard, self.guard.stats, self.auth
        yield GaugeMetricFamily("storaged_http_connections", "Client connections open now.",
                                value=len(guard.connections))
        yield GaugeMetricFamily("storaged_http_connections_max", "max_connections (0: no cap).",
                                value=guard.max_connections)
        yield GaugeMetricFamily("storaged_http_requests_in_flight", "Requests being handled now.",
                                value=self.inflight.count)
        yield CounterMetricFamily("storaged_http_connections_opened", "Client connections accepted and served.",
                                  value=stats.opened)
        yield CounterMetricFamily("storaged_http_connections_refused",
                                  "Connections answered 503 at once because max_connections were open.",
                                  value=stats.refused)
        closed = CounterMetricFamily("storaged_http_connections_closed",
                                     "Connections closed by a hygiene rule.", labels=["reason"])
        for reason in REASONS:
            closed.add_metric([reason], stats.closed[reason])
        yield closed
        yield CounterMetricFamily("storaged_auth_failures", "Requests with a wrong token.",
                                  value=auth.failures_total)
        yield CounterMetricFamily("storaged_auth_throttled", "Requests answered 429 after too many wrong tokens.",
                                  value=auth.refused_total)
        yield GaugeMetricFamily("storaged_auth_throttled_clients", "Client addresses refused (429) right now.",
                                value=auth.blocked_clients())
