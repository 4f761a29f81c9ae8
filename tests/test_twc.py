"""TwcClient: one GET per endpoint, bounded bodies, and failures mapped to short reasons."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest

from bridge.adapters.twc import (
    MAX_BODY_BYTES,
    TwcBadResponseError,
    TwcClient,
    TwcError,
    TwcUnreachableError,
    http_transport,
)

VITALS = b'{"contactor_closed":false,"grid_v":241.3,"pilot_low_v":-0.0,"avg":nan'

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


class _Stream(httpx.AsyncByteStream):
    """A response body delivered like a real socket's, in chunks, not pre-read."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def _response(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    # httpx reads a bytes `content=` eagerly, which a real transport never does; stream it.
    headers.setdefault("content-length", str(len(body)))
    return httpx.Response(status, headers=headers, stream=_Stream(body))


def _client(handler: Handler, max_body_bytes: int = MAX_BODY_BYTES) -> TwcClient:
    return TwcClient(
        "http://192.0.2.50",
        transport=httpx.MockTransport(handler),
        max_body_bytes=max_body_bytes,
    )


async def _fetch(
    handler: Handler, endpoint: str = "vitals", max_body_bytes: int = MAX_BODY_BYTES
) -> bytes:
    client = _client(handler, max_body_bytes)
    try:
        return await client.fetch(endpoint)
    finally:
        await client.aclose()


async def _fetch_error(handler: Handler, endpoint: str = "vitals") -> TwcError:
    with pytest.raises(TwcError) as caught:
        await _fetch(handler, endpoint)
    return caught.value


def _raiser(error: Exception) -> Handler:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise error

    return handler


# --- successful reads ---------------------------------------------------------------------------


async def test_ok_body_is_returned_verbatim() -> None:
    """A 200 body comes back byte for byte, invalid JSON quirks included."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _response(200, VITALS)

    async with asyncio.timeout(5):
        assert await _fetch(handler) == VITALS
    assert len(seen) == 1
    assert seen[0].method == "GET"
    assert str(seen[0].url) == "http://192.0.2.50/api/1/vitals"


@pytest.mark.parametrize("endpoint", ["vitals", "lifetime", "version", "wifi_status"])
async def test_each_endpoint_is_read_from_its_path(endpoint: str) -> None:
    """fetch(endpoint) requests /api/1/<endpoint>."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return _response(200, b"{}")

    async with asyncio.timeout(5):
        assert await _fetch(handler, endpoint) == b"{}"
    assert paths == [f"/api/1/{endpoint}"]


async def test_request_asks_for_an_uncompressed_body() -> None:
    """The request says Accept-Encoding: identity, so the size bound holds for what is read."""
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return _response(200, b"{}")

    async with asyncio.timeout(5):
        await _fetch(handler)
    assert headers[0]["accept-encoding"] == "identity"


async def test_streamed_body_without_length_is_joined() -> None:
    """A chunked body without Content-Length is read whole."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())

    async with asyncio.timeout(5):
        assert await _fetch(handler) == b'{"a":1}'


async def test_body_of_exactly_the_limit_is_accepted() -> None:
    """A body exactly max_body_bytes long is still returned."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return _response(200, b"x" * 16)

    async with asyncio.timeout(5):
        assert await _fetch(handler, max_body_bytes=16) == b"x" * 16


async def test_empty_body_is_returned() -> None:
    """An empty 200 body is returned (the parser, not the client, refuses it)."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return _response(200)

    async with asyncio.timeout(5):
        assert await _fetch(handler) == b""


async def test_client_can_be_reused() -> None:
    """One client reads several endpoints one after the other."""

    def handler(request: httpx.Request) -> httpx.Response:
        return _response(200, request.url.path.encode())

    client = _client(handler)
    try:
        async with asyncio.timeout(5):
            assert await client.fetch("vitals") == b"/api/1/vitals"
            assert await client.fetch("version") == b"/api/1/version"
    finally:
        await client.aclose()


# --- answers that are not a usable body ---------------------------------------------------------


@pytest.mark.parametrize("status", [500, 404, 301, 204, 401, 503])
async def test_non_200_status_is_bad_response(status: int) -> None:
    """Any status other than 200 is TwcBadResponseError with the status in the reason."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return _response(status, b"{}", location="http://elsewhere/")

    async with asyncio.timeout(5):
        error = await _fetch_error(handler)
    assert isinstance(error, TwcBadResponseError)
    assert str(status) in error.reason
    assert error.reason == f"unexpected response: HTTP {status}"
    assert error.endpoint == "vitals"
    assert str(error) == f"vitals: unexpected response: HTTP {status}"


async def test_redirect_is_not_followed() -> None:
    """A redirect is reported, not followed to another host."""
    paths: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(str(request.url))
        return _response(302, location="http://192.0.2.99/api/1/vitals")

    async with asyncio.timeout(5):
        error = await _fetch_error(handler)
    assert isinstance(error, TwcBadResponseError)
    assert paths == ["http://192.0.2.50/api/1/vitals"]


async def test_oversize_declared_content_length_is_bad_response() -> None:
    """A Content-Length over the limit is refused before the body is read."""
    read = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read = True
        yield b"x"

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-length": str(MAX_BODY_BYTES + 1)}, content=body()
        )

    async with asyncio.timeout(5):
        error = await _fetch_error(handler)
    assert isinstance(error, TwcBadResponseError)
    assert error.reason == f"unexpected response: body of {MAX_BODY_BYTES + 1} bytes"
    assert not read


async def test_oversize_streamed_body_without_length_is_bad_response() -> None:
    """A chunked body that grows past the limit is cut off and refused."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b"x" * 1024

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body())

    async with asyncio.timeout(5):
        error = await _fetch_error(handler)
    assert isinstance(error, TwcBadResponseError)
    assert error.reason == f"unexpected response: body over {MAX_BODY_BYTES} bytes"
    assert sent <= MAX_BODY_BYTES // 1024 + 1  # reading stopped at the limit


async def test_body_longer_than_its_declared_length_is_cut_off() -> None:
    """A body that declares a small length but streams more is still bounded."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return _response(200, b"x" * 100, **{"content-length": "10"})

    async with asyncio.timeout(5):
        with pytest.raises(TwcBadResponseError, match="body over 50 bytes"):
            await _fetch(handler, max_body_bytes=50)


# --- no answer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "connection refused"),
        (httpx.ConnectError("All connection attempts failed"), "connection failed"),
        (httpx.ConnectError("[Errno 113] No route to host"), "no route"),
        (httpx.ConnectError("[Errno -2] Name or service not known"), "host name not found"),
        (httpx.ConnectTimeout("timed out"), "timeout"),
        (httpx.ReadTimeout("timed out"), "timeout"),
        (httpx.PoolTimeout("timed out"), "timeout"),
        (httpx.WriteTimeout("timed out"), "timeout"),
        (httpx.ReadError("reset"), "connection dropped (ReadError)"),
        (httpx.WriteError("broken pipe"), "connection dropped (WriteError)"),
        (httpx.RemoteProtocolError("peer closed"), "connection dropped (RemoteProtocolError)"),
        (httpx.UnsupportedProtocol("nope"), "request failed (UnsupportedProtocol)"),
    ],
    ids=lambda value: value if isinstance(value, str) else type(value).__name__,
)
async def test_transport_error_is_unreachable(error: Exception, reason: str) -> None:
    """Each transport failure becomes TwcUnreachableError with its short reason."""
    async with asyncio.timeout(5):
        caught = await _fetch_error(_raiser(error))
    assert isinstance(caught, TwcUnreachableError)
    assert caught.reason == reason


@pytest.mark.parametrize(
    ("cause", "reason"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (OSError(errno.ECONNREFUSED, "refused"), "connection refused"),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "host name not found"),
        (OSError(errno.EHOSTUNREACH, "unreachable"), "no route"),
        (OSError(errno.ENETUNREACH, "unreachable"), "no route"),
        (OSError(errno.EADDRNOTAVAIL, "cannot assign"), "no route"),
    ],
    ids=["refused", "oserror-refused", "gaierror", "hostunreach", "netunreach", "addrnotavail"],
)
async def test_connect_error_reason_comes_from_its_cause(cause: OSError, reason: str) -> None:
    """The reason is read from the OS error behind a ConnectError, not only from its text."""

    def handler(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("opaque") from cause

    async with asyncio.timeout(5):
        caught = await _fetch_error(handler)
    assert isinstance(caught, TwcUnreachableError)
    assert caught.reason == reason


async def test_unit_that_never_answers_hits_the_total_deadline() -> None:
    """A unit that keeps the request open forever is a timeout, via the whole-request deadline."""

    async def handler(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return _response(200)

    client = _client(handler)
    client.total_timeout_s = 0.05
    try:
        async with asyncio.timeout(5):
            with pytest.raises(TwcUnreachableError) as caught:
                await client.fetch("lifetime")
    finally:
        await client.aclose()
    assert caught.value.reason == "timeout"
    assert caught.value.endpoint == "lifetime"


def test_total_deadline_covers_connect_and_read() -> None:
    """The whole-request deadline is longer than connect plus read timeouts."""
    client = TwcClient("http://192.0.2.50", connect_timeout_s=2, read_timeout_s=3)
    assert client.total_timeout_s > 5


async def test_closed_loopback_port_is_connection_refused() -> None:
    """A real connection to a closed port on 127.0.0.1 is reported as "connection refused"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = TwcClient(f"http://127.0.0.1:{port}", connect_timeout_s=2, read_timeout_s=2)
    try:
        async with asyncio.timeout(10):
            with pytest.raises(TwcUnreachableError) as caught:
                await client.fetch("vitals")
    finally:
        await client.aclose()
    assert caught.value.reason == "connection refused"
    assert caught.value.endpoint == "vitals"


# --- real sockets on 127.0.0.1: the HTTP/1.1 transport's errors keep their reasons ----------------

Responder = Callable[[asyncio.StreamWriter], Coroutine[None, None, bool]]
"""Answers one request; True keeps the connection open for the next one."""

GARBAGE = b"\x16\x03\x01\x00\xa5garbage, not HTTP\r\n\r\n"


def _http(body: bytes = b"{}", status: str = "200 OK", headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return head.encode() + body


def _answer(*raws: bytes, keep: bool = True) -> Responder:
    """Send the next of ``raws`` to each request, whichever connection it came on."""
    queue = list(raws)

    async def respond(writer: asyncio.StreamWriter) -> bool:
        writer.write(queue.pop(0))
        await writer.drain()
        return keep

    return respond


async def _drop(_writer: asyncio.StreamWriter) -> bool:
    return False


async def _hang(_writer: asyncio.StreamWriter) -> bool:
    await asyncio.get_running_loop().create_future()  # until the server is torn down
    return False


class _Wire:
    """What a test server saw: connections accepted, request heads, client addresses."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self.requests: list[bytes] = []
        self.peers: list[str] = []


@contextlib.asynccontextmanager
async def _serve(respond: Responder) -> AsyncIterator[_Wire]:
    wire = _Wire()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        wire.connections += 1
        wire.peers.append(writer.get_extra_info("peername")[0])
        try:
            for _ in range(100):
                try:
                    wire.requests.append(await reader.readuntil(b"\r\n\r\n"))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await respond(writer):
                    return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    wire.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield wire
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _real_fetch(
    respond: Responder, endpoint: str = "vitals", **options: Any
) -> tuple[bytes | TwcError, _Wire]:
    options = {"connect_timeout_s": 2.0, "read_timeout_s": 2.0, **options}
    async with asyncio.timeout(10), _serve(respond) as wire:
        client = TwcClient(wire.url, **options)
        try:
            return await client.fetch(endpoint), wire
        except TwcError as error:
            return error, wire
        finally:
            await client.aclose()


async def test_real_request_on_the_wire() -> None:
    """The request line, Host and Accept-Encoding sent over a real socket."""
    body, wire = await _real_fetch(_answer(_http(VITALS)))
    assert body == VITALS
    head = wire.requests[0].lower()
    assert head.startswith(b"get /api/1/vitals http/1.1\r\n")
    assert b"\r\naccept-encoding: identity\r\n" in head
    assert f"\r\nhost: {wire.url.removeprefix('http://')}\r\n".encode() in head


async def test_dropped_connection_is_dropped_not_timeout_and_not_retried() -> None:
    """A unit that closes after reading the request is "connection dropped", asked once."""
    error, wire = await _real_fetch(_drop)
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "connection dropped (RemoteProtocolError)"
    assert (wire.connections, len(wire.requests)) == (1, 1)


@pytest.mark.parametrize("keep", [False, True], ids=["then-close", "then-wait"])
async def test_garbage_answer_is_unreachable_with_a_one_line_reason(keep: bool) -> None:
    """Bytes that are not HTTP are a dropped connection, said in one line, never a traceback."""
    error, wire = await _real_fetch(_answer(GARBAGE, keep=keep))
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "connection dropped (RemoteProtocolError)"
    assert "\n" not in str(error)
    assert len(wire.requests) == 1


async def test_body_cut_short_is_a_dropped_connection() -> None:
    """A body shorter than its Content-Length, then EOF, is a dropped connection."""
    error, _ = await _real_fetch(
        _answer(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}", keep=False)
    )
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "connection dropped (RemoteProtocolError)"


async def test_keep_alive_connection_is_reused() -> None:
    """Two requests in a row travel on one connection."""
    async with asyncio.timeout(10), _serve(_answer(_http(b"1"), _http(b"2"))) as wire:
        client = TwcClient(wire.url)
        try:
            assert await client.fetch("vitals") == b"1"
            assert await client.fetch("lifetime") == b"2"
        finally:
            await client.aclose()
    assert [head.split(b"\r\n")[0] for head in wire.requests] == [
        b"GET /api/1/vitals HTTP/1.1",
        b"GET /api/1/lifetime HTTP/1.1",
    ]
    assert wire.connections == 1


@pytest.mark.parametrize(
    "oversize",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 100_000,
        b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 100_000,
    ],
    ids=["declared", "until-eof"],
)
async def test_oversize_real_body_is_refused_and_its_connection_dropped(oversize: bytes) -> None:
    """An oversize body is not drained: the next request opens a new connection."""
    async with asyncio.timeout(10), _serve(_answer(oversize, _http(b"{}"))) as wire:
        client = TwcClient(wire.url)
        try:
            with pytest.raises(TwcBadResponseError, match="unexpected response: body"):
                await client.fetch("vitals")
            assert await client.fetch("vitals") == b"{}"
        finally:
            await client.aclose()
    assert wire.connections == 2


async def test_real_non_200_then_ok() -> None:
    """An HTTP error answer is a bad response; the same client reads the next answer."""
    async with asyncio.timeout(10), _serve(_answer(_http(status="503 Busy"), _http())) as wire:
        client = TwcClient(wire.url)
        try:
            with pytest.raises(TwcBadResponseError, match="HTTP 503"):
                await client.fetch("vitals")
            assert await client.fetch("vitals") == b"{}"
        finally:
            await client.aclose()


@pytest.mark.parametrize(
    "partial",
    [None, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{"],
    ids=["no-answer", "stalled-body"],
)
async def test_silent_unit_is_a_read_timeout(partial: bytes | None) -> None:
    """The read timeout, not the whole-request deadline, ends a wait for bytes."""
    started = time.monotonic()
    error, _ = await _real_fetch(_hang if partial is None else _answer(partial), read_timeout_s=0.2)
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "timeout"
    assert time.monotonic() - started < 2.0  # the deadline would be 7.2 s


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
async def test_source_address_is_bound(source: str) -> None:
    """Requests leave from ``source_address``."""
    with socket.socket() as sock:
        try:
            sock.bind((source, 0))
        except OSError as error:
            pytest.skip(f"cannot bind {source}: {error}")
    body, wire = await _real_fetch(_answer(_http()), source_address=source)
    assert body == b"{}"
    assert wire.peers == [source]


async def test_source_address_not_on_this_host_is_no_route() -> None:
    """A source address this host does not have fails as "no route"."""
    error, wire = await _real_fetch(_answer(_http()), source_address="192.0.2.77")
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "no route"
    assert wire.connections == 0


async def test_connect_to_reaches_a_named_unit_at_another_address() -> None:
    """``connect_to`` opens the connection there; the request still names the URL's host."""
    async with asyncio.timeout(10), _serve(_answer(_http(VITALS), keep=True)) as wire:
        port = int(wire.url.rpartition(":")[2])
        client = TwcClient(
            "http://unit-7.invalid:8123", transport=http_transport(connect_to=("127.0.0.1", port))
        )
        try:
            assert await client.fetch("vitals") == VITALS
        finally:
            await client.aclose()
    assert wire.connections == 1
    assert b"\r\nhost: unit-7.invalid:8123\r\n" in wire.requests[0].lower()


async def test_aclose_is_safe_unused_and_twice() -> None:
    """aclose() works on a client never used and when called twice; a closed client refuses."""
    unused = TwcClient("http://192.0.2.50")
    await unused.aclose()
    await unused.aclose()
    async with asyncio.timeout(10), _serve(_answer(_http())) as wire:
        client = TwcClient(wire.url)
        assert await client.fetch("vitals") == b"{}"
        await client.aclose()
        await client.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await client.fetch("vitals")
    assert wire.connections == 1


async def test_real_chunked_body_is_joined() -> None:
    """A chunked answer over a real socket is decoded; the connection stays usable."""
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
    )
    async with asyncio.timeout(10), _serve(_answer(chunked, _http(b"2"))) as wire:
        client = TwcClient(wire.url)
        try:
            assert await client.fetch("vitals") == b'{"a":1}'
            assert await client.fetch("vitals") == b"2"
        finally:
            await client.aclose()
    assert wire.connections == 1


@pytest.mark.parametrize(
    "after",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX"],
    ids=["closed-while-idle", "stray-bytes-while-idle"],
)
async def test_idle_connection_closed_or_spoiled_by_the_unit_is_replaced(after: bytes) -> None:
    """A unit that closes its idle connection, or talks out of turn, costs no failed poll."""

    async def answer_then_misbehave(writer: asyncio.StreamWriter) -> bool:
        writer.write(_http(b"1"))
        await writer.drain()
        if not after:
            return False  # close the connection after answering, without saying so
        await asyncio.sleep(0.05)
        writer.write(after)
        await writer.drain()
        return True

    async with asyncio.timeout(10), _serve(answer_then_misbehave) as wire:
        client = TwcClient(wire.url)
        try:
            assert await client.fetch("vitals") == b"1"
            await asyncio.sleep(0.2)  # the close or the stray bytes arrive while idle
            assert await client.fetch("vitals") == b"1"
        finally:
            await client.aclose()
    assert wire.connections == 2


def _chunked(body: bytes, size: int) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_of_megabytes_arrives_whole_and_the_connection_is_kept(framing: str) -> None:
    """Megabytes in one answer, in many reads and chunks, reach the reader intact."""
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB
    big = _http(body) if framing == "length" else _chunked(body, 100_000)
    async with asyncio.timeout(20), _serve(_answer(big, _http(b"{}"))) as wire:
        client = TwcClient(wire.url, max_body_bytes=len(body))
        try:
            assert await client.fetch("vitals") == body
            assert await client.fetch("vitals") == b"{}"
        finally:
            await client.aclose()
    assert wire.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        _http(headers="X-Big: " + "a" * 20_000 + "\r\n"),
        _http(headers="X: 1\r\n" * 101),
        b"HTTP/1.1 100 Continue\r\n\r\n" + _http(),
    ],
    ids=["head-over-16-KiB", "101-headers", "informational"],
)
async def test_heads_past_the_bounds_are_a_dropped_connection(answer: bytes) -> None:
    """Limits h11 leaves to us (a whole head's size, header count, 1xx) fail the request cleanly."""
    error, _ = await _real_fetch(_answer(answer))
    assert isinstance(error, TwcUnreachableError)
    assert error.reason == "connection dropped (RemoteProtocolError)"
