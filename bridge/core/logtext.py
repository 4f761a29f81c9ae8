r"""Untrusted text made safe for one log or terminal line: controls shown, length bounded.

A unit's serial number, firmware string or field name can hold anything JSON can: newlines that
would start a forged log line, ANSI escapes that recolour or rewrite a terminal, bidi overrides
that reorder what a reader sees. Everything :meth:`str.isprintable` rejects (C0 and C1 controls,
DEL, format and bidi characters, line and paragraph separators, surrogates, unassigned code
points) is written as a visible escape instead (``\n``, ``\x1b``, ``\u202e``), the way Python
writes it in a ``repr``.
"""

from __future__ import annotations

import logging
from typing import Final

# Long enough for any serial, firmware string, field name or body excerpt a real unit sends.
MAX_SHOWN_CHARS: Final = 120
# The formatter's bound: a whole log message, which may quote several device strings.
MAX_MESSAGE_CHARS: Final = 4000
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code <= 0xFF:  # noqa: PLR2004 - one byte
        return f"\\x{code:02x}"
    if code <= 0xFFFF:  # noqa: PLR2004 - the basic multilingual plane
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escaped(text: object, limit: int | None = MAX_SHOWN_CHARS) -> str:
    """``text`` (``str()`` of it) on one line with every non-printable character escaped.

    At most ``limit`` characters of the result are kept (``None``: all), then ``…(+N)`` says how
    many characters of the input were left out, so a 60 kB field value is still one short line.
    """
    text = text if isinstance(text, str) else str(text)
    if limit is None:
        limit = 10 * len(text)  # room for every character escaped (``\\U0010ffff``)
    if text.isprintable() and len(text) <= limit:  # the common case: nothing to do
        return text
    out: list[str] = []
    used = 0
    for index, ch in enumerate(text):
        piece = ch if ch.isprintable() else _escape_char(ch)
        if used + len(piece) > limit:
            return "".join(out) + f"…(+{len(text) - index})"
        out.append(piece)
        used += len(piece)
    return "".join(out)


class EscapingFormatter(logging.Formatter):
    """A formatter that escapes control characters in each record's message.

    The safety net under the explicit :func:`escaped` at the call sites: whatever a message
    quotes, it stays one line and no escape sequence reaches the terminal. A traceback (exception
    or stack text) is appended as it is: it comes from the bridge's own code, and its line breaks
    are what makes it readable.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        """The record formatted with its message escaped; the record itself is left unchanged."""
        original = record.message
        record.message = escaped(original, MAX_MESSAGE_CHARS)
        try:
            return super().formatMessage(record)
        finally:
            record.message = original
