"""The HTTP side: one client per Wall Connector, one request at a time, never a retry.

This is the only module that imports httpx (the request/response types) and h11 (which parses
the responses, under :class:`Http11Wire`'s bounds). Errors are mapped here to the small tree
below, each with a short ``reason`` a person can read in a log line or on the ``reachability``
topic::

    TwcError
     ├─ TwcUnreachableError       the unit did not answer (refused, timeout, no route, reset)
     └─ TwcBadResponseError       it answered, but not with a usable body (HTTP status, too large)
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Final

import h11
import httpx

from bridge.core.models import Endpoint
from bridge.core.vocabulary import Unreachable, unreachable_reason

MAX_BODY_BYTES: Final = 64 * 1024  # real bodies are under 1 KiB; bound what a broken unit sends
API_PREFIX: Final = "/api/1/"

_NO_ROUTE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


# httpx's AsyncHTTPTransport default, so an idle unit's connection is dropped as before.
_KEEPALIVE_S: Final = 5.0
# Past this much unread, stop reading the socket until the body's reader catches up.
_PAUSE_ABOVE_BYTES: Final = 256 * 1024
# Bounds h11 does not set: the whole head (h11 bounds only an incomplete one), its header count.
MAX_HEAD_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
_MAX_REASON_CHARS: Final = 200
_H11_TOO_LONG: Final = 431  # the status h11 suggests when an incomplete event outgrows its bound
_MAX_CACHED_REQUESTS: Final = 16  # a client asks for four endpoints
# A compressed body could expand past the size bound after it was checked.
_REQUEST_HEADERS: Final = {"Accept-Encoding": "identity"}


class TwcError(Exception):
    """A request to a Wall Connector failed."""

    def __init__(self, reason: str, endpoint: str) -> None:
        self.reason = reason
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: {reason}")


class TwcUnreachableError(TwcError):
    """The unit did not answer at all."""


class TwcBadResponseError(TwcError):
    """The unit answered with something other than a usable body."""


def _connect_reason(error: BaseException) -> Unreachable:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        if isinstance(cause, OSError) and cause.errno in _NO_ROUTE_ERRNOS:
            return "no route"
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = str(error).lower()
    if "refused" in text:
        return "connection refused"
    if "unreachable" in text or "no route" in text:
        return "no route"
    if "name or service" in text or "nodename" in text:
        return "host name not found"
    return "connection failed"


class ResponseError(Exception):
    """The bytes are not a usable HTTP/1.1 response, or it was cut short (one-line reason)."""


class Signal(enum.Enum):
    """What :meth:`Http11Wire.next_event` returns besides the head and body pieces."""

    NEED_DATA = enum.auto()
    END = enum.auto()


def _one_line(error: h11.RemoteProtocolError) -> str:
    # h11 quotes the offending bytes: a 16 KiB status line would make a 16 KiB reason.
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


class Http11Wire:
    """One connection's HTTP/1.1, no I/O: request bytes out, response events in, all bounded.

    h11 parses (framing, chunked coding, keep-alive rules, trailers); this adds what h11 leaves
    open: an exact bound on the head (h11 bounds only an *incomplete* event, so a whole head
    arriving in one read could be any size), a header count, and no informational responses.
    Bytes wait here and reach h11 only when it needs more, so :attr:`buffered` is what the
    socket has delivered and the reader has not taken yet (for flow control). Anything wrong
    raises :class:`ResponseError` with a one-line reason; no byte sequence raises anything else.
    """

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._pending: list[bytes] = []
        self.buffered = 0
        self._eof = False  # the peer closed; told to h11 once the pending bytes are in
        self._eof_fed = False
        self._head_room: int | None = None  # bytes h11 may still get before the head is parsed
        self.reusable = False  # set once the whole response was read and framing allows it

    def request(self, head: h11.Request, body: bytes = b"") -> bytes:
        """The bytes of a whole request; its response is read next.

        Raises:
            h11.LocalProtocolError: the request is not valid HTTP/1.1 (no Host header...).
        """
        wire = self._h11
        out = [wire.send(head)]
        if body:
            out.append(wire.send(h11.Data(data=body)))
        out.append(wire.send(h11.EndOfMessage()))
        self._head_room = MAX_HEAD_BYTES + 1  # one more than the bound: h11 then refuses it
        self.reusable = False
        return b"".join(piece for piece in out if piece)

    def feed(self, data: bytes) -> None:
        """Add bytes that arrived."""
        self._pending.append(data)
        self.buffered += len(data)

    def feed_eof(self) -> None:
        """The peer closed its side: no more bytes will arrive."""
        self._eof = True

    def next_event(self) -> h11.Response | bytes | Signal:
        """The response head, a body piece, :data:`Signal.END`, or :data:`Signal.NEED_DATA`.

        Raises:
            ResponseError: the bytes are not a usable response, or it was cut short.
        """
        wire = self._h11
        while True:
            if self._pending:  # now, rather than after h11 says NEED_DATA: one call fewer
                self._feed()
            try:
                event = wire.next_event()
            except h11.RemoteProtocolError as error:
                raise self._refusal(error) from None
            if type(event) is h11.Data:  # the common case first: `type() is` is the cheap test
                return bytes(event.data)
            if event is h11.NEED_DATA:
                if not self._feed():
                    return Signal.NEED_DATA
            elif type(event) is h11.Response:
                return self._head(event)
            elif type(event) is h11.EndOfMessage:
                return self._end()
            elif type(event) is h11.InformationalResponse:  # never asked for (no Expect, Upgrade)
                raise ResponseError(f"unexpected informational response {event.status_code}")
            else:  # ConnectionClosed or PAUSED: h11 saw the end before the response's
                raise ResponseError("connection closed before the response ended")

    def _refusal(self, error: h11.RemoteProtocolError) -> ResponseError:
        if error.error_status_hint == _H11_TOO_LONG:  # h11's own words: "Receive buffer too long"
            what = "chunk size line or trailers" if self._head_room is None else "head"
            return ResponseError(f"response {what} too large")
        return ResponseError(_one_line(error))

    def _feed(self) -> bool:
        """Hand h11 what arrived (only up to the head's bound before the head); False if nothing."""
        pending = self._pending
        wire = self._h11
        room = self._head_room
        if not pending:
            if not self._eof or self._eof_fed:
                return False
            if room is not None:
                if room > MAX_HEAD_BYTES:
                    raise ResponseError("server disconnected without sending a response")
                raise ResponseError("connection closed in the response head")
            self._eof_fed = True
            wire.receive_data(b"")
            return True
        if room is None:
            for data in pending:
                wire.receive_data(data)
            pending.clear()
            self.buffered = 0
            return True
        if not room:  # h11 refuses a head past its bound before this: never feed it more
            raise ResponseError("response head too large")
        data = pending[0]
        if len(data) > room:
            pending[0] = data[room:]
            data = data[:room]
        else:
            del pending[0]
        self._head_room = room - len(data)
        self.buffered -= len(data)
        wire.receive_data(data)
        return True

    def _head(self, head: h11.Response) -> h11.Response:
        if len(head.headers) > MAX_HEADERS:
            raise ResponseError("too many headers")
        self._head_room = None
        return head

    def _end(self) -> Signal:
        wire = self._h11
        # Bytes beyond the response: the next answer on this connection could not be trusted.
        if (
            wire.our_state is h11.DONE
            and wire.their_state is h11.DONE
            and not self._pending
            and not wire.trailing_data[0]
        ):
            wire.start_next_cycle()
            self.reusable = True
        return Signal.END


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a unit; parses what arrives for the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.wire = Http11Wire()
        self.in_flight = False  # a request was sent and its response is not wholly read
        self.closed = False  # by either side; a closed connection is never reused
        self.error: Exception | None = None  # what the socket reported, if it failed
        self.stray = False  # bytes arrived with no request in flight: not to be trusted
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream socket's
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.in_flight:
            self.stray = True
            return
        wire = self.wire
        wire.feed(data)
        if wire.buffered > _PAUSE_ABOVE_BYTES and self.transport is not None:
            self.transport.pause_reading()  # the reader is behind (a huge body): stop buffering
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, error: Exception | None) -> None:
        self.wire.feed_eof()
        self.closed = True
        self.error = self.error or error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_event(self, read_timeout_s: float | None) -> h11.Response | bytes | Signal:
        """The next head, body piece or END of the response in flight, waiting for bytes."""
        wire = self.wire
        while True:
            try:
                event = wire.next_event()
            except ResponseError as error:
                # A socket error (a reset) shows as "closed" to the parser: report the error.
                if self.error is not None:
                    raise httpx.ReadError(str(self.error) or type(self.error).__name__) from None
                raise httpx.RemoteProtocolError(str(error)) from None
            if event is not Signal.NEED_DATA:
                if self._paused and wire.buffered <= _PAUSE_ABOVE_BYTES // 2:
                    self._paused = False
                    if self.transport is not None:
                        self.transport.resume_reading()
                return event
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(read_timeout_s):
                    await self._waiter
            except TimeoutError:
                raise httpx.ReadTimeout("timed out waiting for the unit") from None
            finally:
                self._waiter = None

    def close(self) -> None:
        """Drop the connection (abandoned mid-response, or not reusable)."""
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class _Body(httpx.AsyncByteStream):
    """A response body, handed out as it arrives; closing it early drops the connection."""

    def __init__(
        self, connection: _Connection, read_timeout_s: float | None, lock: asyncio.Lock
    ) -> None:
        self._connection = connection
        self._read_timeout_s = read_timeout_s
        self._lock = lock  # the transport's: the next request may go once this body is closed
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._connection.next_event(self._read_timeout_s)
            if isinstance(event, bytes):
                if event:
                    yield event
                continue
            break  # END: a head cannot come twice
        self._complete = True

    async def aclose(self) -> None:
        connection = self._connection
        if not connection.in_flight:
            return  # closed before
        connection.in_flight = False
        wire = connection.wire
        # Bytes after the response's end: the next answer on this connection could not be trusted.
        reusable = self._complete and wire.reusable and not wire.buffered
        if reusable and not (connection.closed or connection.stray):
            connection.idle_since = time.monotonic()
        else:
            connection.close()
        self._lock.release()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Units speak plain HTTP; an https:// base URL verifies against the system's CAs. Built once,
    # and only if asked for: a context costs ~30 ms and ~1 MB.
    return ssl.create_default_context()


class _Http11Transport(httpx.AsyncBaseTransport):
    """An httpx transport on one kept-alive connection: one request at a time, never a retry.

    httpx's own stack costs ~4x the CPU per request of this, and polling is most of the bridge's
    work; the units need nothing but GET over HTTP/1.1 (h11 parses, :class:`Http11Wire` bounds).
    """

    def __init__(
        self, *, source_address: str | None, connect_to: tuple[str, int] | None = None
    ) -> None:
        self._source_address = source_address
        self._connect_to = connect_to
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._requests: dict[tuple[str, bytes, tuple[tuple[bytes, bytes], ...]], h11.Request] = {}

    async def _connect(self, url: httpx.URL, timeouts: dict[str, float | None]) -> _Connection:
        connection = self._connection
        if (
            connection is not None
            and not connection.closed
            and not connection.stray
            and time.monotonic() - connection.idle_since < _KEEPALIVE_S
        ):
            return connection
        if connection is not None:
            connection.close()
            self._connection = None
        if url.scheme not in {"http", "https"}:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        loop = asyncio.get_running_loop()
        https = url.scheme == "https"
        host, port = self._connect_to or (url.host, url.port or (443 if https else 80))
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                _, connection = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=_tls_context() if https else None,
                    server_hostname=url.host if https else None,
                    local_addr=(self._source_address, 0) if self._source_address else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting to the unit") from None
        except OSError as error:
            raise httpx.ConnectError(str(error) or type(error).__name__) from error
        self._connection = connection
        return connection

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the TwcClient was closed")
        timeout: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            async with asyncio.timeout(timeout.get("pool")):
                await self._lock.acquire()  # released when the body is closed
        except TimeoutError:
            raise httpx.PoolTimeout("another request to the unit is still running") from None
        try:
            return await self._send(request, timeout)
        except BaseException:
            self._lock.release()
            raise

    async def _send(
        self, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        connection = await self._connect(request.url, timeouts)
        transport = connection.transport
        if transport is None or transport.is_closing():
            connection.close()
            raise httpx.RemoteProtocolError("connection closed before the request")
        try:
            data = connection.wire.request(self._h11_request(request), request.content or b"")
        except h11.LocalProtocolError as error:
            connection.close()
            raise httpx.LocalProtocolError(str(error)) from None
        connection.in_flight = True
        transport.write(data)
        read_timeout_s = timeouts.get("read")
        try:
            event = await connection.next_event(read_timeout_s)
        except BaseException:
            connection.in_flight = False
            connection.close()
            raise
        assert isinstance(event, h11.Response)  # noqa: S101 - the wire's first event
        return httpx.Response(
            event.status_code,
            headers=event.headers.raw_items(),
            stream=_Body(connection, read_timeout_s, self._lock),
            request=request,
            extensions={
                "http_version": b"HTTP/" + event.http_version,
                "reason_phrase": event.reason,
            },
        )

    def _h11_request(self, request: httpx.Request) -> h11.Request:
        # h11 validates every header of a new Request: a third of its cost per exchange. A unit's
        # client sends the same few requests over and over, so each is built once.
        key = (request.method, request.url.raw_path, tuple(request.headers.raw))
        head = self._requests.get(key)
        if head is None:
            if len(self._requests) >= _MAX_CACHED_REQUESTS:
                self._requests.clear()
            head = h11.Request(method=key[0], target=key[1], headers=request.headers.raw)
            self._requests[key] = head
        return head

    def drop_connection(self) -> None:
        """Close the kept-alive connection; the next request opens a new one (to its URL's host)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def aclose(self) -> None:
        self._closed = True
        self.drop_connection()


def http_transport(
    source_address: str | None = None, *, connect_to: tuple[str, int] | None = None
) -> httpx.AsyncBaseTransport:
    """The transport :class:`TwcClient` uses by default (also for the benchmark's baseline).

    ``connect_to`` (host, port) is where to open the connection instead of the URL's host and
    port, as curl's ``--connect-to``: requests still name the URL's host (``Host`` header, TLS
    name). The benchmark reaches many named units behind one Host-routed simulator port with it,
    as a LAN's name service would send them to their own addresses.
    """
    return _Http11Transport(source_address=source_address, connect_to=connect_to)


class TwcClient:
    """Reads one unit's endpoints over its own single connection.

    Each unit gets its own client: one shared pool scans every connection on every request and
    collapses with many units (measured: 1,276 requests/s with 1 in flight, 166 with 50).
    httpx is the request/response API and the test
    seam (an injected ``httpx.MockTransport``); the network I/O is :class:`_Http11Transport`'s.
    The transport is called directly: redirects, cookies and auth are not wanted here.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 15.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        source_address: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.max_body_bytes = max_body_bytes
        # The read timeout bounds each wait for bytes; a unit dripping one byte a second would
        # never trip it, so the whole request also has a deadline.
        self.total_timeout_s = connect_timeout_s + read_timeout_s + 5.0
        self._transport = transport or _Http11Transport(source_address=source_address)
        # Parsed now, so a malformed base URL fails here, where the client is built.
        self._prefix = str(httpx.URL(base_url)).rstrip("/") + API_PREFIX
        # One request per endpoint, built once: a GET without a body is only read by transports,
        # and building it (URL, headers, Host) costs about as much as parsing the response.
        self._requests: dict[str, httpx.Request] = {}
        # Read-only and shared by every request; `write` only matters to httpx transports.
        self._timeout = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": 5.0,
            "pool": read_timeout_s,
        }

    def retarget(self, base_url: str) -> None:
        """Ask the unit at ``base_url`` from the next request on (a unit that moved).

        The kept-alive connection to the old address is closed. Call it between requests: the
        poller, the only caller, never has one in flight when it moves.

        Raises:
            httpx.InvalidURL: ``base_url`` is no usable URL (the client is left as it was).
        """
        prefix = str(httpx.URL(base_url)).rstrip("/") + API_PREFIX
        self.base_url = base_url
        self._prefix = prefix
        self._requests.clear()
        if isinstance(self._transport, _Http11Transport):
            self._transport.drop_connection()

    async def fetch(self, endpoint: Endpoint | str) -> bytes:
        """GET ``/api/1/<endpoint>`` and return the body bytes.

        Raises:
            TwcUnreachableError: no answer (refused, timeout, no route, connection dropped).
            TwcBadResponseError: a status other than 200, or a body over the size limit.
        """
        try:
            async with asyncio.timeout(self.total_timeout_s):
                return await self._fetch(endpoint)
        except TimeoutError:
            raise TwcUnreachableError("timeout", endpoint) from None
        except httpx.TimeoutException:
            raise TwcUnreachableError("timeout", endpoint) from None
        except httpx.ConnectError as error:
            raise TwcUnreachableError(_connect_reason(error), endpoint) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
            raise TwcUnreachableError(
                f"connection dropped ({type(error).__name__})", endpoint
            ) from None
        except httpx.HTTPError as error:
            raise TwcUnreachableError(
                f"request failed ({type(error).__name__})", endpoint
            ) from None
        except OSError as error:
            raise TwcUnreachableError(_connect_reason(error), endpoint) from None

    async def _fetch(self, endpoint: str) -> bytes:
        request = self._requests.get(endpoint)
        if request is None:
            request = self._requests[endpoint] = httpx.Request(
                "GET",
                self._prefix + endpoint,
                headers=_REQUEST_HEADERS,
                extensions={"timeout": self._timeout},
            )
        response = await self._transport.handle_async_request(request)
        try:
            if response.status_code != httpx.codes.OK:
                raise TwcBadResponseError(
                    unreachable_reason("unexpected response", f"HTTP {response.status_code}"),
                    endpoint,
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise TwcBadResponseError(
                    unreachable_reason("unexpected response", f"body of {declared} bytes"), endpoint
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise TwcBadResponseError(
                        unreachable_reason(
                            "unexpected response", f"body over {self.max_body_bytes} bytes"
                        ),
                        endpoint,
                    )
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the connection (safe to call twice, or on a client never used)."""
        await self._transport.aclose()
