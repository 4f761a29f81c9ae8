"""Http11Wire, h11 under our bounds: framing, keep-alive, limits; bad bytes: ResponseError only."""

from __future__ import annotations

import asyncio

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.adapters.twc import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    Http11Wire,
    ResponseError,
    Signal,
    _Connection,
)

GET = h11.Request(method=b"GET", target=b"/api/1/vitals", headers=[(b"Host", b"unit")])


def _pieces(raw: bytes, pieces: int) -> list[bytes]:
    size = max(1, -(-len(raw) // pieces))
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def _parse(
    raw: bytes, *, pieces: int = 1, eof: bool = True, wire: Http11Wire | None = None
) -> tuple[h11.Response, bytes, Http11Wire]:
    """Send a GET, feed ``raw`` in ``pieces`` and read the whole response."""
    wire = wire or Http11Wire()
    wire.request(GET)
    chunks = _pieces(raw, pieces)
    head: h11.Response | None = None
    body = bytearray()
    for _ in range(3 * len(raw) + 10):
        event = wire.next_event()
        if event is Signal.END:
            break
        if event is Signal.NEED_DATA:
            if chunks:
                wire.feed(chunks.pop(0))
            elif eof:
                wire.feed_eof()
            else:
                pytest.fail("the wire wants more than the whole response")
        elif isinstance(event, h11.Response):
            head = event
        else:
            assert isinstance(event, bytes)
            body += event
    else:
        pytest.fail("the response never ended")
    assert head is not None
    return head, bytes(body), wire


def test_request_bytes_are_plain_http11() -> None:
    assert Http11Wire().request(GET) == b"GET /api/1/vitals HTTP/1.1\r\nHost: unit\r\n\r\n"


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_content_length_body_in_any_pieces(pieces: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        b'{"grid_v":1}\n'
    )
    head, body, wire = _parse(raw, pieces=pieces, eof=False)
    assert (head.status_code, head.reason, head.http_version) == (200, b"OK", b"1.1")
    assert head.headers.raw_items()[0] == (b"Content-Type", b"application/json")
    assert body == b'{"grid_v":1}\n'
    assert wire.reusable


def test_a_kept_alive_connection_reads_the_next_response() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    _, _, wire = _parse(raw, eof=False)
    _, body, wire = _parse(raw.replace(b"{}", b"[]"), eof=False, wire=wire)
    assert body == b"[]"
    assert wire.reusable


@pytest.mark.parametrize("pieces", [1, 7, 1000])
def test_chunked_body_is_decoded_with_extensions_and_trailers(pieces: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value\r\n{"a":\r\n3\r\n1}\n\r\n0\r\nX-Trailer: yes\r\n\r\n'
    )
    _, body, wire = _parse(raw, pieces=pieces, eof=False)
    assert body == b'{"a":1}\n'
    assert wire.reusable


def test_body_until_eof_when_neither_length_nor_chunked() -> None:
    _, body, wire = _parse(b"HTTP/1.0 200 OK\r\n\r\nabc", pieces=2)
    assert body == b"abc"
    assert not wire.reusable


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        # h11 closes every HTTP/1.0 connection, keep-alive asked or not: one reconnect, no risk.
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n12", False),  # a byte too many
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", True),  # bare LF line ends
    ],
)
def test_keep_alive_follows_the_headers_and_the_framing(raw: bytes, reusable: bool) -> None:
    _, _, wire = _parse(raw, eof=False)
    assert wire.reusable is reusable


def test_a_head_request_has_no_body_whatever_its_length_says() -> None:
    wire = Http11Wire()
    wire.request(h11.Request(method=b"HEAD", target=b"/", headers=[(b"Host", b"unit")]))
    wire.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
    assert isinstance(wire.next_event(), h11.Response)
    assert wire.next_event() is Signal.END
    assert wire.reusable


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "server disconnected without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "connection closed in the response head"),
        (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", "illegal status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "illegal status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "illegal header line"),
        (b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", "continuation line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "unexpected informational response 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding: chunked"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", "without sending complete message"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "illegal chunk header"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "malformed chunk footer",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab", "incomplete chunked"),
    ],
)
def test_malformed_or_cut_short_is_a_response_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ResponseError, match=reason) as caught:
        _parse(raw)
    assert "\n" not in str(caught.value)


def test_a_reason_quoting_the_peer_stays_short() -> None:
    with pytest.raises(ResponseError, match="illegal status line") as caught:
        _parse(b"X" * 10_000 + b"\r\n\r\n")
    assert len(str(caught.value)) <= 200


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "response head too large"),
        # A whole head over the bound in one piece: h11 alone would parse it.
        (
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
            "response head too large",
        ),
        (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", "too many headers"),
        (CHUNKED + b"1" * MAX_HEAD_BYTES * 2, "chunk size line or trailers too large"),
        (CHUNKED + b"0\r\n" + b"X: 1\r\n" * 5000, "chunk size line or trailers too large"),
    ],
    ids=["endless-head", "whole-head", "header-count", "chunk-line", "trailers"],
)
def test_oversized_heads_and_lines_are_refused_without_waiting_for_the_end(
    raw: bytes, reason: str
) -> None:
    """Limits apply as bytes arrive: an endless head is refused, not buffered forever."""
    wire = Http11Wire()
    wire.request(GET)
    wire.feed(raw)
    events: list[object] = []
    with pytest.raises(ResponseError, match=reason):
        events.extend(wire.next_event() for _ in range(10))
    assert Signal.NEED_DATA not in events


def test_body_is_handed_out_as_it_arrives() -> None:
    """A large body does not pile up: each piece is returned once it is there."""
    wire = Http11Wire()
    wire.request(GET)
    wire.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
    assert isinstance(wire.next_event(), h11.Response)
    for _ in range(3):
        wire.feed(b"x" * 65536)
        assert wire.buffered == 65536
        assert wire.next_event() == b"x" * 65536
        assert wire.buffered == 0
    assert wire.next_event() is Signal.NEED_DATA


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=400)
    | st.builds(
        lambda head, rest: head + rest,
        st.sampled_from(
            [
                b"HTTP/1.1 200 OK\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.0 200 OK\r\n\r\n",
            ]
        ),
        st.binary(max_size=200),
    ),
    st.integers(1, 20),
)
def test_any_bytes_give_events_or_a_response_error_only(raw: bytes, pieces: int) -> None:
    """No byte sequence, split anywhere, raises anything but ResponseError, and parsing ends."""
    wire = Http11Wire()
    wire.request(GET)
    chunks = _pieces(raw, pieces)
    failure: ResponseError | None = None
    ended = False
    try:
        for _ in range(3 * len(raw) + 50):
            event = wire.next_event()
            if event is Signal.END:
                ended = True
                break
            if event is Signal.NEED_DATA:
                if chunks:
                    wire.feed(chunks.pop(0))
                else:
                    wire.feed_eof()
    except ResponseError as error:
        failure = error
    assert ended or failure is not None, "the wire neither ended nor failed"
    assert failure is None or "\n" not in str(failure)


class _Socket(asyncio.Transport):
    """A transport that records flow control (reading paused or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False


async def test_reading_pauses_past_256_kib_unread_and_resumes_once_taken() -> None:
    """A reader that falls behind stops the socket's reads instead of buffering without end."""
    connection = _Connection()
    socket = _Socket()
    connection.connection_made(socket)
    connection.wire.request(GET)
    connection.in_flight = True
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n")
    for _ in range(3):
        connection.data_received(b"x" * 100_000)
    assert not socket.reading  # 300 000 bytes unread
    assert isinstance(await connection.next_event(1.0), h11.Response)
    assert await connection.next_event(1.0) == b"x" * 300_000
    assert socket.reading
    connection.data_received(b"x" * 100_000)
    assert await connection.next_event(1.0) == b"x" * 100_000
    assert await connection.next_event(1.0) is Signal.END
    assert connection.wire.reusable
