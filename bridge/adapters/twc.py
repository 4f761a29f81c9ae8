"""The HTTP side: one client per Wall Connector, one request at a time, never a retry.

This is the only module that imports httpx. Errors are mapped here to the small tree
below, each with a short ``reason`` a person can read in a log line or on the ``reachability``
topic::

    TwcError
     ├─ TwcUnreachableError       the unit did not answer (refused, timeout, no route, reset)
     └─ TwcBadResponseError       it answered, but not with a usable body (HTTP status, too large)
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Final

import httpx

from bridge.adapters.http11 import ProtocolError, ResponseHead, ResponseParser, Signal
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


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a unit; parses what arrives for the request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
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
        if self.parser is None:
            self.stray = True
            return
        self.parser.feed(data)
        if self.parser.buffered > _PAUSE_ABOVE_BYTES and self.transport is not None:
            self.transport.pause_reading()  # the reader is behind (a huge body): stop buffering
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, error: Exception | None) -> None:
        if self.parser is not None:
            self.parser.feed_eof()
        self.closed = True
        self.error = self.error or error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_event(self, read_timeout_s: float | None) -> ResponseHead | bytes | Signal:
        """The next head, body piece or END of the response in flight, waiting for bytes."""
        parser = self.parser
        assert parser is not None  # noqa: S101 - set by the transport before the request
        while True:
            try:
                event = parser.next_event()
            except ProtocolError as error:
                # A socket error (a reset) shows as "closed" to the parser: report the error.
                if self.error is not None:
                    raise httpx.ReadError(str(self.error) or type(self.error).__name__) from None
                raise httpx.RemoteProtocolError(str(error)) from None
            if event is not Signal.NEED_DATA:
                if self._paused and parser.buffered <= _PAUSE_ABOVE_BYTES // 2:
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
        parser = connection.parser
        if parser is None:
            return  # closed before
        connection.parser = None
        if self._complete and parser.reusable and not (connection.closed or connection.stray):
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
    work; the units need nothing but GET over HTTP/1.1 (parsed by :mod:`bridge.adapters.http11`).
    """

    def __init__(
        self, *, source_address: str | None, connect_to: tuple[str, int] | None = None
    ) -> None:
        self._source_address = source_address
        self._connect_to = connect_to
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

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
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
        head.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw)
        head.append(b"\r\n")
        connection.parser = ResponseParser(expect_body=request.method != "HEAD")
        transport = connection.transport
        if transport is None or transport.is_closing():
            connection.close()
            raise httpx.RemoteProtocolError("connection closed before the request")
        transport.write(b"".join(head) + (request.content or b""))
        read_timeout_s = timeouts.get("read")
        try:
            event = await connection.next_event(read_timeout_s)
        except BaseException:
            connection.parser = None
            connection.close()
            raise
        assert isinstance(event, ResponseHead)  # noqa: S101 - the parser's first event
        return httpx.Response(
            event.status,
            headers=event.headers,
            stream=_Body(connection, read_timeout_s, self._lock),
            request=request,
            extensions={"http_version": event.http_version, "reason_phrase": event.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


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
        self._urls: dict[str, httpx.URL] = {}
        # Read-only and shared by every request; `write` only matters to httpx transports.
        self._timeout = {
            "connect": connect_timeout_s,
            "read": read_timeout_s,
            "write": 5.0,
            "pool": read_timeout_s,
        }

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
        url = self._urls.get(endpoint)
        if url is None:
            url = self._urls[endpoint] = httpx.URL(self._prefix + endpoint)
        request = httpx.Request(
            "GET", url, headers=_REQUEST_HEADERS, extensions={"timeout": self._timeout}
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
