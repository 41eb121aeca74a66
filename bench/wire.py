"""A lean httpx transport for the load requests: one pre-opened HTTP/1.1 connection, bytes written at once.

Why not httpcore's pool: between `client.send()` and the first byte on the socket, httpcore passes several
anyio locks and events, each a yield to the event loop. With c requests fired together the loop runs them
round-robin, so on this 2-core machine the first request reached the socket ~60 ms and the last ~150-300 ms
after the batch fired (measured at c=64). Even one task step per request (~1 ms of httpx and asyncio each)
put the last of 64 at ~70 ms. So a batch is fired in three phases: `await prime(request)` before the batch
(connection open, whole request serialized by h11), `fire(request)` in one plain loop over the batch (a
socket write each, no await: microseconds apart), then `client.send(request)` reads the response through
httpx as usual. `request.extensions["topo.sent_at"]` is the perf_counter of the write: the client's `start`.

Errors are httpx's own (ConnectError, ReadTimeout, RemoteProtocolError, ...), so the client's error mapping
is the same whichever transport runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

SENT_AT = "topo.sent_at"
# Flow control: a server that sends faster than the client parses must not fill the client's memory, so the
# socket is paused while more than QUEUE_HIGH bytes wait and resumed below QUEUE_LOW.
QUEUE_HIGH = 1 << 20
QUEUE_LOW = 256 << 10


class _Wire(asyncio.Protocol):
    """The socket side: received bytes and the end of the connection, queued for the reader."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.closed = False
        self.queued_bytes = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.queue.put_nowait(data)
        self.queued_bytes += len(data)
        if self.queued_bytes > QUEUE_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    async def get(self) -> bytes | BaseException | None:
        item = await self.queue.get()
        if isinstance(item, bytes):
            self.queued_bytes -= len(item)
            if self.paused and self.queued_bytes < QUEUE_LOW and self.transport is not None \
                    and not self.transport.is_closing():
                self.paused = False
                self.transport.resume_reading()
        return item

    def eof_received(self) -> bool | None:
        self.closed = True
        self.queue.put_nowait(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.queue.put_nowait(exc if exc is not None else None)


class WireTransport(httpx.AsyncBaseTransport):
    """One keep-alive connection to one origin; requests on it are sequential (one slot of a batch)."""

    def __init__(self, connect_timeout: float = 10.0) -> None:
        self.connect_timeout = connect_timeout
        self._wire: _Wire | None = None
        self._h11: h11.Connection | None = None
        self._origin: tuple[str, int] | None = None
        self._primed: tuple[httpx.Request, bytes] | None = None
        self._fired: httpx.Request | None = None

    @property
    def connected(self) -> bool:
        return self._wire is not None and not self._wire.closed and self._h11 is not None \
            and self._h11.our_state is h11.IDLE

    async def connect(self, url: httpx.URL | str, *, fresh: bool = False) -> None:
        """Open the connection now (before a batch), unless an idle one is open already; `fresh` replaces an
        open one (a connection idle near the server's keep-alive limit may be closed by it mid-request)."""
        url = httpx.URL(url)
        origin = (url.host, url.port or (443 if url.scheme == "https" else 80))
        if self.connected and self._origin == origin and not fresh:
            return
        self._drop()
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the bench's wire transport speaks plain http, not {url.scheme}")
        loop = asyncio.get_running_loop()
        try:
            _, wire = await asyncio.wait_for(loop.create_connection(_Wire, origin[0], origin[1]),
                                             self.connect_timeout)
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {origin[0]}:{origin[1]} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc.strerror or exc}") from exc
        self._wire, self._h11, self._origin = wire, h11.Connection(h11.CLIENT), origin

    async def prime(self, request: httpx.Request) -> None:
        """Before a batch: make sure the connection is open and serialize the whole request (h11)."""
        if self._primed is not None:  # primed but never fired: h11 already counts it as sent; start afresh
            self._drop()
        if not self.connected or self._origin != (request.url.host, request.url.port or 80):
            await self.connect(request.url)
        assert self._h11 is not None
        conn = self._h11
        body = request.content  # built from bytes by the client, so already in memory
        try:
            data = conn.send(h11.Request(method=request.method, target=request.url.raw_path,
                                         headers=list(request.headers.raw)))
            data += conn.send(h11.Data(data=body)) if body else b""
            data += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        self._primed = (request, data)

    def fire(self, request: httpx.Request) -> float:
        """Hand the primed request's bytes to the socket now (no await); returns and records the moment."""
        if self._primed is None or self._primed[0] is not request:
            raise httpx.LocalProtocolError("fire() without prime() of this request")
        assert self._wire is not None and self._wire.transport is not None
        data = self._primed[1]
        self._primed = None
        sent_at = request.extensions[SENT_AT] = time.perf_counter()
        self._wire.transport.write(data)
        self._fired = request
        return sent_at

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._fired is not request:  # not fired by a batch: prime (unless it was) and fire it now
            if self._primed is None or self._primed[0] is not request:
                await self.prime(request)
            self.fire(request)
        self._fired = None
        if self._wire is None or self._wire.closed and self._wire.queue.empty():
            self._drop()
            raise httpx.ReadError("the connection closed before the request could be answered")
        read_timeout = (request.extensions.get("timeout") or {}).get("read")
        event = await self._next_event(read_timeout)
        while isinstance(event, h11.InformationalResponse):
            event = await self._next_event(read_timeout)
        if not isinstance(event, h11.Response):
            self._drop()
            raise httpx.RemoteProtocolError(f"expected a response, got {type(event).__name__}")
        return httpx.Response(
            status_code=event.status_code,
            headers=list(event.headers),
            stream=_Body(self, read_timeout),
            extensions={"http_version": b"HTTP/" + event.http_version, "reason_phrase": event.reason},
        )

    async def _next_event(self, read_timeout: float | None) -> Any:
        assert self._h11 is not None and self._wire is not None
        conn, wire = self._h11, self._wire
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._drop()
                raise httpx.RemoteProtocolError(str(exc)) from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                chunk = await asyncio.wait_for(wire.get(), read_timeout)
            except asyncio.TimeoutError as exc:
                self._drop()
                raise httpx.ReadTimeout(f"no data for {read_timeout} s") from exc
            if isinstance(chunk, BaseException):
                self._drop()
                raise httpx.ReadError(f"connection lost: {chunk}") from chunk
            if chunk is None:  # the peer closed: h11 decides whether the message was complete
                conn.receive_data(b"")
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    self._drop()
                    raise httpx.RemoteProtocolError(
                        f"peer closed connection without sending complete message body: {exc}") from exc
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    self._drop()
                    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
                return event
            conn.receive_data(chunk)

    def _finish(self) -> None:
        """After a complete response: keep the connection for the next request if both sides allow it."""
        conn = self._h11
        if conn is not None and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            try:
                conn.start_next_cycle()
                return
            except h11.LocalProtocolError:
                pass
        self._drop()

    def _drop(self) -> None:
        if self._wire is not None and self._wire.transport is not None:
            self._wire.transport.close()
        self._wire, self._h11, self._primed = None, None, None

    async def aclose(self) -> None:
        self._drop()


class _Body(httpx.AsyncByteStream):
    def __init__(self, owner: WireTransport, read_timeout: float | None) -> None:
        self._owner = owner
        self._read_timeout = read_timeout
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self._complete:
            event = await self._owner._next_event(self._read_timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._complete = True
            elif isinstance(event, h11.ConnectionClosed):
                self._owner._drop()
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def aclose(self) -> None:
        if self._complete:
            self._owner._finish()
        else:
            self._owner._drop()  # an unread rest of a body cannot be skipped on HTTP/1.1: start afresh
