"""The HTTP side: one client per Wall Connector, one request at a time, never a retry.

This is the only module that imports httpx. Errors are mapped here to the small tree below, each
with a short ``reason`` a person can read in a log line or on the ``reachability`` topic::

    TwcError
     ├─ TwcUnreachableError       the unit did not answer (refused, timeout, no route, reset)
     └─ TwcBadResponseError       it answered, but not with a usable body (HTTP status, too large)
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Final

import httpx

from bridge.models import Endpoint

MAX_BODY_BYTES: Final = 64 * 1024  # real bodies are under 1 KiB; bound what a broken unit sends
API_PREFIX: Final = "/api/1/"

_NO_ROUTE_ERRNOS: Final = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN, errno.EADDRNOTAVAIL}
)


# The units speak plain HTTP, but httpx builds a TLS context per transport (~30 ms of CPU each):
# one shared context keeps a client per unit, and a scan of thousands of hosts, cheap.
_SHARED_TLS_CONTEXT: Final = ssl.create_default_context()


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


class TwcClient:
    """Reads one unit's endpoints over its own small connection pool.

    Each unit gets its own client: one shared httpx pool scans every connection on every request
    and collapses with many units (perf-anchors.md §3).
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
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(
                connect=connect_timeout_s, read=read_timeout_s, write=5.0, pool=read_timeout_s
            ),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            transport=transport
            or httpx.AsyncHTTPTransport(
                retries=0, local_address=source_address, verify=_SHARED_TLS_CONTEXT
            ),
            trust_env=False,  # a proxy from the environment must not sit between LAN devices
            follow_redirects=False,
            # A compressed body could expand past the size bound after it was checked.
            headers={"Accept-Encoding": "identity"},
        )

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
        async with self._client.stream("GET", API_PREFIX + endpoint) as response:
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

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
