"""Escaping untrusted text for log lines and the terminal, and the escaping log formatter."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.logtext import MAX_MESSAGE_CHARS, EscapingFormatter, escaped
from bridge.tools.cli import LOG_DATE_FORMAT, LOG_FORMAT

HOSTILE_SERIAL = "AB\n\x1b[31mC"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("PGT21234567", "PGT21234567"),
        ("Garage ⚡ 車庫", "Garage ⚡ 車庫"),
        (HOSTILE_SERIAL, "AB\\n\\x1b[31mC"),
        ("a\r\nb\tc", "a\\r\\nb\\tc"),
        ("nul\x00del\x7fc1\x85", "nul\\x00del\\x7fc1\\x85"),
        ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("lone\ud800surrogate", "lone\\ud800surrogate"),
        ("astral\U000e0001tag", "astral\\U000e0001tag"),
    ],
)
def test_escaped_shows_every_non_printable_character(raw: str, shown: str) -> None:
    """Printable text is kept; newlines, controls, ESC, bidi and format characters are escaped."""
    assert escaped(raw) == shown


def test_escaped_takes_any_object() -> None:
    """Non-strings are shown as ``str()`` of them."""
    assert escaped(12.5) == "12.5"
    assert escaped(None) == "None"


def test_escaped_bounds_the_length_and_says_how_much_was_cut() -> None:
    """A 60 kB value becomes one short line naming the characters left out."""
    shown = escaped("x" * 60_000, 20)
    assert shown == "x" * 20 + "…(+59980)"
    # Escapes count against the bound too: 10 ESC characters are 40 shown characters.
    assert escaped("\x1b" * 10, 9) == "\\x1b\\x1b…(+8)"


def test_escaped_without_a_bound_keeps_everything() -> None:
    """``limit=None`` cuts nothing, even when every character becomes a long escape."""
    raw = "\U000e0001" * 50 + "x" * 500
    assert escaped(raw, None) == "\\U000e0001" * 50 + "x" * 500


@given(st.text())
def test_escaped_is_always_one_printable_line(raw: str) -> None:
    """Whatever the input, the result is printable, one line and bounded."""
    shown = escaped(raw)
    assert shown.isprintable()
    assert len(shown) <= 120 + len(f"…(+{len(raw)})")


def _format(message: str, *args: object, exc_info: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT, datefmt=LOG_DATE_FORMAT))
    log = logging.getLogger(f"test-logtext-{id(stream)}")
    log.propagate = False
    log.addHandler(handler)
    try:
        if exc_info:
            try:
                raise ValueError("boom")  # noqa: TRY301 - a real traceback to format
            except ValueError:
                log.exception(message, *args)
        else:
            log.warning(message, *args)
    finally:
        log.removeHandler(handler)
    return stream.getvalue()


def test_formatter_keeps_a_forged_line_on_the_real_one() -> None:
    """A device string with a newline and ANSI codes cannot start a line of its own."""
    forged = "X\n2024-01-01 00:00:00 ERROR   unit garage: \x1b[2Jcleared"
    text = _format("unit %s: serial %s", "garage", forged)
    assert text.count("\n") == 1, text
    assert "\x1b" not in text
    assert "serial X\\n2024-01-01 00:00:00 ERROR   unit garage: \\x1b[2Jcleared" in text


def test_formatter_leaves_the_record_unchanged() -> None:
    """Other handlers of the same record still see the message as it was."""
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "a%sb", ("\n",), None)
    EscapingFormatter("%(message)s").format(record)
    assert record.getMessage() == "a\nb"
    assert record.message == "a\nb"


def test_formatter_keeps_tracebacks_readable() -> None:
    """Exception text is appended as it is, one frame per line."""
    text = _format("crashed on %s", "a\nb", exc_info=True)
    first, *rest = text.splitlines()
    assert first.endswith("crashed on a\\nb")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"


def test_formatter_bounds_one_message() -> None:
    """A message quoting a huge value is cut, not written out whole."""
    text = _format("value %s", "v" * 100_000)
    assert len(text) < MAX_MESSAGE_CHARS + 100
    assert "…(+" in text


def test_setup_logging_installs_the_escaping_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run``'s logging goes through the escaping formatter."""
    from bridge.tools.cli import setup_logging  # noqa: PLC0415 - needs the patched root logger

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    setup_logging("info")
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, EscapingFormatter)
