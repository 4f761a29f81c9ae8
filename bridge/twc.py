"""The HTTP side: one client per Wall Connector, one request at a time, never a retry.

This is the only module that imports httpx and aiohttp. Errors are mapped here to the small tree
below, each with a short ``reason`` a person can read in a log line or on the ``reachability``
topic::

    TwcError
     ├─ TwcUnreachableError       the unit did not answer (refused, timeout, no route, reset)
     └─ TwcBadResponseError       it answered, but not with a usable body (HTTP status, too large)
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import httpx

from bridge.models import Endpoint

MAX_BODY_BYTES: Final = 64 * 1024  # real bodies are under 1 KiB; bound what a broken unit sends
API_PREFIX: Final = "/api/1/"

_NO_ROUTE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


# httpx's AsyncHTTPTransport default, so an idle unit's connection is dropped as before.
_KEEPALIVE_S: Final = 5.0
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


def _connect_reason(error: BaseException) -> str:
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


def _httpx_error(error: aiohttp.ClientError) -> httpx.TransportError | None:
    """The exception httpx's own stack raised for this failure, or None for no equivalent.

    An aiohttp error left as it is still ends as "request failed (<class name>)" in ``fetch``.
    """
    # Timeouts first: aiohttp's are also ServerConnectionError, which would read as "dropped".
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(error))
    if isinstance(error, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(str(error))
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(error))  # raised `from error`: the OSError gives the reason
    # A peer that closed early, or sent something that is not HTTP (aiohttp's parser errors come as
    # ClientResponseError, body framing errors as ClientPayloadError): httpcore calls all of these
    # RemoteProtocolError, and the reasons on the topics stay what they were.
    if isinstance(
        error,
        aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError | aiohttp.ClientPayloadError,
    ):
        return httpx.RemoteProtocolError(str(error))
    if isinstance(error, aiohttp.ClientOSError):
        return httpx.ReadError(str(error))
    if isinstance(error, aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(str(error))
    return None


class _AiohttpStream(httpx.AsyncByteStream):
    """An aiohttp response body, read as it arrives; closing it frees the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientError as error:
                if (mapped := _httpx_error(error)) is None:
                    raise
                raise mapped from error
            if not chunk:
                break
            yield chunk
        self._complete = True

    async def aclose(self) -> None:
        if self._complete:
            self._response.release()  # back to the pool for the next poll
        else:
            # Abandoned mid-body (too large, a timeout): drop the connection instead of draining it.
            self._response.close()


class _AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport doing the I/O with one aiohttp session: a single connection, no retry."""

    def __init__(self, *, source_address: str | None) -> None:
        self._source_address = source_address
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._timeout_key: tuple[float | None, ...] = ()
        self._timeout = aiohttp.ClientTimeout()

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the TwcClient was closed")
        connector = aiohttp.TCPConnector(
            limit=1,
            # The units speak plain HTTP; an https:// base URL verifies against the system's CAs
            # with aiohttp's own default context, built once (a context costs ~30 ms and ~0.8 MB).
            ssl=True,
            local_addr=(self._source_address, 0) if self._source_address else None,
            keepalive_timeout=_KEEPALIVE_S,
            # getaddrinfo on every new connection, as httpx did: a unit's name may move to a new
            # DHCP lease, and aiodns, if installed, would not read the system's resolver setup.
            resolver=aiohttp.ThreadedResolver(),
            use_dns_cache=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # a proxy from the environment must not sit between LAN devices
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # the units set none; skip the jar's work
        )
        # aiohttp resends an idempotent request once when the connection drops; a unit that
        # drops it is reported, never asked twice.
        session._retry_connection = False  # noqa: SLF001 - no public switch (aiohttp 3.14)
        self._session = session
        return session

    def _client_timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        timeout = request.extensions.get("timeout", {})
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        if key != self._timeout_key:
            connect, read, pool = key
            # aiohttp's `connect` covers waiting for the pool and connecting, like httpx's `pool`.
            self._timeout = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
            self._timeout_key = key
        return self._timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                # Names as written (multi_items() lowercases them): small embedded servers are
                # not always case-blind.
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                ],
                data=request.content or None,
                allow_redirects=False,
                compress=None,
                timeout=self._client_timeout(request),
            )
        except aiohttp.ClientError as error:
            if (mapped := _httpx_error(error)) is None:
                raise
            raise mapped from error
        try:
            return httpx.Response(
                response.status,
                headers=response.raw_headers,
                stream=_AiohttpStream(response),
                request=request,
            )
        except BaseException:
            response.close()
            raise

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def aiohttp_transport(source_address: str | None = None) -> httpx.AsyncBaseTransport:
    """The transport :class:`TwcClient` uses by default (also for the benchmark's baseline)."""
    return _AiohttpTransport(source_address=source_address)


class TwcClient:
    """Reads one unit's endpoints over its own single connection.

    Each unit gets its own client: one shared pool scans every connection on every request and
    collapses with many units (perf-anchors.md §3). httpx is the request/response API and the test
    seam (an injected ``httpx.MockTransport``), but aiohttp does the network I/O: httpx's own
    stack and client machinery cost ~4x the CPU per request, and polling is most of the bridge's
    work. The transport is called directly: redirects, cookies and auth are not wanted here.
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
        self._transport = transport or _AiohttpTransport(source_address=source_address)
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
        except (httpx.HTTPError, aiohttp.ClientError) as error:
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
                    f"unexpected response: HTTP {response.status_code}", endpoint
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise TwcBadResponseError(
                    f"unexpected response: body of {declared} bytes", endpoint
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise TwcBadResponseError(
                        f"unexpected response: body over {self.max_body_bytes} bytes", endpoint
                    )
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the connection (safe to call twice, or on a client never used)."""
        await self._transport.aclose()
