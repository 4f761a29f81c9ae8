"""The HTTP/1.1 response parser: framing, keep-alive, bounds; bad bytes raise ProtocolError only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.adapters.http11 import (
    MAX_CHUNK_LINE_BYTES,
    MAX_HEAD_BYTES,
    ProtocolError,
    ResponseHead,
    ResponseParser,
    Signal,
)


def _parse(
    raw: bytes, *, pieces: int = 1, eof: bool = True
) -> tuple[ResponseHead, bytes, ResponseParser]:
    """Feed ``raw`` in ``pieces`` and read the whole response."""
    parser = ResponseParser()
    size = max(1, -(-len(raw) // pieces))
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    head: ResponseHead | None = None
    body = bytearray()
    for _ in range(3 * len(raw) + 10):
        event = parser.next_event()
        if event is Signal.END:
            break
        if event is Signal.NEED_DATA:
            if chunks:
                parser.feed(chunks.pop(0))
            elif eof:
                parser.feed_eof()
            else:
                pytest.fail("the parser wants more than the whole response")
        elif isinstance(event, ResponseHead):
            head = event
        else:
            assert isinstance(event, bytes)
            body += event
    assert head is not None
    assert parser.complete
    return head, bytes(body), parser


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_content_length_body_in_any_pieces(pieces: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
        b'{"grid_v":1}\n'
    )
    head, body, parser = _parse(raw, pieces=pieces, eof=False)
    assert (head.status, head.reason, head.http_version) == (200, b"OK", b"HTTP/1.1")
    assert head.headers[0] == (b"Content-Type", b"application/json")
    assert body == b'{"grid_v":1}\n'
    assert parser.reusable


@pytest.mark.parametrize("pieces", [1, 7, 1000])
def test_chunked_body_is_decoded_with_extensions_and_trailers(pieces: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value\r\n{"a":\r\n3\r\n1}\n\r\n0\r\nX-Trailer: yes\r\n\r\n'
    )
    _, body, parser = _parse(raw, pieces=pieces, eof=False)
    assert body == b'{"a":1}\n'
    assert parser.reusable


def test_body_until_eof_when_neither_length_nor_chunked() -> None:
    head, body, parser = _parse(b"HTTP/1.0 200 OK\r\n\r\nabc", pieces=2)
    assert body == b"abc"
    assert not head.keep_alive
    assert not parser.reusable


@pytest.mark.parametrize(
    ("raw", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n12", False),  # a byte too many
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}", True),  # bare LF line ends
    ],
)
def test_keep_alive_follows_the_headers_and_the_framing(raw: bytes, reusable: bool) -> None:
    _, _, parser = _parse(raw, eof=False)
    assert parser.reusable is reusable


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "server disconnected without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "connection closed in the response head"),
        (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", "malformed status line"),
        (b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "unexpected informational response 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer coding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", "connection closed in the body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "chunk longer than its size",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab", "connection closed"),
    ],
)
def test_malformed_or_cut_short_is_a_protocol_error(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        _parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES,
        b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * MAX_CHUNK_LINE_BYTES * 2,
    ],
    ids=["head", "header-count", "chunk-line"],
)
def test_endless_heads_and_lines_are_refused_without_waiting_for_the_end(raw: bytes) -> None:
    """Limits apply as bytes arrive: an endless head is refused, not buffered forever."""
    parser = ResponseParser()
    parser.feed(raw)
    events: list[object] = []

    def parse_all() -> None:
        events.extend(parser.next_event() for _ in range(10))

    with pytest.raises(ProtocolError, match="too"):
        parse_all()
    assert Signal.NEED_DATA not in events


def test_body_is_handed_out_as_it_arrives() -> None:
    """A large body does not pile up in the parser: each piece is returned once it is there."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
    assert isinstance(parser.next_event(), ResponseHead)
    for _ in range(3):
        parser.feed(b"x" * 65536)
        assert parser.next_event() == b"x" * 65536
        assert parser.buffered == 0
    assert parser.next_event() is Signal.NEED_DATA


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
def test_any_bytes_give_events_or_a_protocol_error_only(raw: bytes, pieces: int) -> None:
    """No byte sequence, split anywhere, raises anything but ProtocolError, and parsing ends."""
    parser = ResponseParser()
    size = max(1, -(-len(raw) // pieces))
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    failure: ProtocolError | None = None
    ended = False
    try:
        for _ in range(3 * len(raw) + 50):
            event = parser.next_event()
            if event is Signal.END:
                ended = True
                break
            if event is Signal.NEED_DATA:
                if chunks:
                    parser.feed(chunks.pop(0))
                else:
                    parser.feed_eof()
    except ProtocolError as error:
        failure = error
    assert ended or failure is not None, "the parser neither ended nor failed"
    assert failure is None or "\n" not in str(failure)
