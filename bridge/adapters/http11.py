"""HTTP/1.1 responses from bytes: a strict, bounded parser with no I/O (the units' wire format).

:class:`ResponseParser` is fed whatever arrives, in any pieces, and hands back the response head,
body pieces (chunked transfer coding decoded), then :data:`Signal.END`. Anything that is not a
well-formed HTTP/1.x response raises :class:`ProtocolError` with a one-line reason; no byte
sequence raises anything else. Sizes are bounded (head, header count, chunk-size lines, trailers),
and the body is handed out as it arrives, so the caller bounds the body.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_HEADERS: Final = 100
MAX_CHUNK_LINE_BYTES: Final = 1024
MAX_TRAILER_BYTES: Final = 16 * 1024

_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE_END: Final = re.compile(rb"\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CR: Final = ord("\r")


class ProtocolError(Exception):
    """The bytes are not a well-formed HTTP/1.x response (one-line reason)."""


class Signal(enum.Enum):
    """What :meth:`ResponseParser.next_event` returns besides the head and body pieces."""

    NEED_DATA = enum.auto()
    END = enum.auto()


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and headers; ``keep_alive``: the connection may carry the next request."""

    status: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


class _State(enum.Enum):
    HEAD = enum.auto()
    LENGTH = enum.auto()  # Content-Length bytes left
    UNTIL_EOF = enum.auto()  # neither length nor chunked: the body ends with the connection
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()  # the CRLF after a chunk's data
    TRAILERS = enum.auto()
    DONE = enum.auto()


def _tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Comma-separated values of every ``name`` header, lowercased and trimmed."""
    return [
        item.strip().lower()
        for key, value in headers
        if key.lower() == name
        for item in value.split(b",")
        if item.strip()
    ]


def _header_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    if len(lines) > MAX_HEADERS:
        raise ProtocolError("too many headers")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:  # also a folded line: it starts blank
            raise ProtocolError("malformed header line")
        headers.append((name, value.strip(b" \t")))
    return headers


class ResponseParser:
    """Parses one response; make a new one for each request on a kept-alive connection."""

    def __init__(self, *, expect_body: bool = True) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._state = _State.HEAD
        self._left = 0
        self._expect_body = expect_body  # False for HEAD requests
        self.reusable = False  # set once the whole response was read and framing allows it

    @property
    def buffered(self) -> int:
        """Bytes received but not parsed yet (for flow control)."""
        return len(self._buffer)

    @property
    def complete(self) -> bool:
        """Whether the whole response was read."""
        return self._state is _State.DONE

    def feed(self, data: bytes) -> None:
        """Add bytes that arrived."""
        self._buffer += data

    def feed_eof(self) -> None:
        """The peer closed its side: no more bytes will arrive."""
        self._eof = True

    def next_event(self) -> ResponseHead | bytes | Signal:
        """The next thing the buffered bytes say.

        Raises:
            ProtocolError: the bytes are not a well-formed response, or it was cut short.
        """
        state = self._state
        if state is _State.HEAD:
            return self._head()
        if state is _State.LENGTH:
            return self._take(self._left, then=_State.DONE, what="body")
        if state is _State.UNTIL_EOF:
            if self._buffer:
                piece = bytes(self._buffer)
                self._buffer.clear()
                return piece
            if self._eof:
                self._state = _State.DONE
                return Signal.END
            return Signal.NEED_DATA
        if state is _State.CHUNK_SIZE:
            return self._chunk_size()
        if state is _State.CHUNK_DATA:
            return self._take(self._left, then=_State.CHUNK_END, what="chunk")
        if state is _State.CHUNK_END:
            return self._chunk_end()
        if state is _State.TRAILERS:
            return self._trailers()
        return Signal.END

    # ---- the head ------------------------------------------------------------------------------

    def _head(self) -> ResponseHead | Signal:
        match = _HEAD_END.search(self._buffer, 0, MAX_HEAD_BYTES + 4)
        if match is None:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("response head too large")
            if self._eof:
                if self._buffer:
                    raise ProtocolError("connection closed in the response head")
                raise ProtocolError("server disconnected without sending a response")
            return Signal.NEED_DATA
        raw = bytes(self._buffer[: match.start()])
        del self._buffer[: match.end()]
        lines = _LINE_END.split(raw)
        status = _STATUS_LINE.fullmatch(lines[0])
        if status is None:
            raise ProtocolError("malformed status line")
        minor, code, reason = status.group(1), int(status.group(2)), status.group(3) or b""
        headers = _header_fields(lines[1:])
        if 100 <= code < 200:  # noqa: PLR2004 - never asked for (no Expect, no Upgrade)
            raise ProtocolError(f"unexpected informational response {code}")
        connection = _tokens(headers, b"connection")
        keep_alive = b"close" not in connection if minor == b"1" else b"keep-alive" in connection
        self._frame(code, headers)
        if self._state is _State.UNTIL_EOF:
            keep_alive = False
        self.reusable = keep_alive  # withdrawn if bytes follow the body
        if self._state is _State.DONE:
            self._finish()
        return ResponseHead(
            status=code,
            reason=reason,
            http_version=b"HTTP/1." + minor,
            headers=headers,
            keep_alive=keep_alive,
        )

    def _frame(self, code: int, headers: list[tuple[bytes, bytes]]) -> None:
        codings = _tokens(headers, b"transfer-encoding")
        lengths = set(_tokens(headers, b"content-length"))
        if not self._expect_body or code in {204, 304}:
            self._state = _State.DONE
        elif codings:
            if codings[-1] != b"chunked" or len(codings) > 1:
                raise ProtocolError("unsupported transfer coding")
            self._state = _State.CHUNK_SIZE
        elif lengths:
            (length,) = lengths if len(lengths) == 1 else (b"",)
            if not length.isdigit() or len(length) > 18:  # noqa: PLR2004 - fits in an int64
                raise ProtocolError("malformed Content-Length")
            self._left = int(length)
            self._state = _State.LENGTH if self._left else _State.DONE
        else:
            self._state = _State.UNTIL_EOF

    # ---- the body ------------------------------------------------------------------------------

    def _take(self, wanted: int, *, then: _State, what: str) -> bytes | Signal:
        if not self._buffer:
            if self._eof:
                raise ProtocolError(f"connection closed in the {what}")
            return Signal.NEED_DATA
        piece = bytes(self._buffer[:wanted])
        del self._buffer[:wanted]
        self._left -= len(piece)
        if not self._left:
            self._state = then
            if then is _State.DONE:
                self._finish()
        return piece

    def _line(self, limit: int, what: str) -> bytes | None:
        match = _LINE_END.search(self._buffer, 0, limit + 2)
        if match is None:
            if len(self._buffer) > limit + 1:  # + a CR whose LF is still to come
                raise ProtocolError(f"{what} too long")
            if self._eof:
                raise ProtocolError(f"connection closed in the {what}")
            return None
        line = bytes(self._buffer[: match.start()])
        del self._buffer[: match.end()]
        return line

    def _chunk_size(self) -> bytes | Signal:
        line = self._line(MAX_CHUNK_LINE_BYTES, "chunk size line")
        if line is None:
            return Signal.NEED_DATA
        size = line.partition(b";")[0].strip(b" \t")
        if _HEX.fullmatch(size) is None:
            raise ProtocolError("malformed chunk size")
        self._left = int(size, 16)
        if self._left:
            self._state = _State.CHUNK_DATA
            return self._take(self._left, then=_State.CHUNK_END, what="chunk")
        self._state = _State.TRAILERS
        self._left = MAX_TRAILER_BYTES
        return self._trailers()

    def _chunk_end(self) -> bytes | Signal:
        buffer = self._buffer
        if buffer[:2] == b"\r\n":
            del buffer[:2]
        elif buffer[:1] == b"\n":
            del buffer[:1]
        elif len(buffer) > 1 or (buffer and buffer[0] != _CR):  # only a CR may await its LF
            raise ProtocolError("chunk longer than its size")
        elif self._eof:
            raise ProtocolError("connection closed in the chunk")
        else:
            return Signal.NEED_DATA
        self._state = _State.CHUNK_SIZE
        return self._chunk_size()

    def _trailers(self) -> Signal:
        while True:
            line = self._line(self._left, "trailer section")
            if line is None:
                return Signal.NEED_DATA
            if not line:
                self._state = _State.DONE
                self._finish()
                return Signal.END
            self._left -= len(line) + 2
            if self._left < 0:
                raise ProtocolError("trailer section too long")

    def _finish(self) -> None:
        # Bytes beyond the response: the next answer on this connection could not be trusted.
        if self._buffer:
            self.reusable = False
