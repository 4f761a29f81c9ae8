"""Names the bridge gives things: connector ids, topic levels from body keys, a safe base topic."""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Final

MAX_ID_LENGTH: Final = 48
MAX_FIELD_LENGTH: Final = 64
# Ids that would collide with the bridge's own topics under the base topic.
RESERVED_IDS: Final = frozenset({"bridge", "group"})

_SLUG_SEPARATORS = re.compile(r"[^a-z0-9]+")
# Also the character set of Home Assistant object ids, so a level maps to one discovery topic.
_FIELD_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_ID_SHAPE = re.compile(r"[a-z0-9][a-z0-9_-]*")


def slugify(text: str, max_length: int = MAX_ID_LENGTH) -> str:
    """Turn a display name into a lower-case ``[a-z0-9_]`` slug ("Garage 2" -> "garage_2").

    Accents are folded to ASCII; everything else that is not a letter or digit becomes ``_``.
    Returns an empty string when nothing usable is left.
    """
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = _SLUG_SEPARATORS.sub("_", folded.lower()).strip("_")
    return slug[:max_length].rstrip("_")


def id_problem(candidate: str) -> str | None:
    """Say what is wrong with a connector id as one topic level, or ``None`` when it is fine."""
    if not candidate:
        return "must not be empty"
    if len(candidate) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if not _ID_SHAPE.fullmatch(candidate):
        return "may contain only a-z, 0-9, '_' and '-', starting with a letter or digit"
    if candidate in RESERVED_IDS:
        return f"'{candidate}' is reserved for the bridge's own topics"
    return None


def field_level(key: str) -> str | None:
    """Return the topic level for a body key, or ``None`` if nothing safe is left.

    Keys the unit really sends (``grid_v``, ``currentA_a``) come through unchanged; anything a
    future or hostile firmware might send (``/``, ``+``, ``#``, control characters, huge keys) is
    reduced to ``[A-Za-z0-9_-]`` and bounded.
    """
    if len(key) > _CACHED_KEY_LENGTH:  # a hostile key is not worth keeping in memory
        return _field_level(key)
    return _cached_field_level(key)


def _field_level(key: str) -> str | None:
    level = _FIELD_UNSAFE.sub("_", key)[:MAX_FIELD_LENGTH]
    if not level.strip("_-"):
        return None
    return level


# The same few dozen keys arrive on every poll of every unit: remember their levels.
_CACHED_KEY_LENGTH: Final = 2 * MAX_FIELD_LENGTH
_cached_field_level = functools.lru_cache(maxsize=1024)(_field_level)


def validate_base_topic(base: str) -> str | None:
    """Say what is wrong with a configured base topic, or ``None`` when it is fine."""
    if not base:
        return "must not be empty"
    if base.startswith("$"):
        return "must not start with '$' (brokers reserve those topics)"
    if base.startswith("/") or base.endswith("/"):
        return "must not start or end with '/'"
    if "//" in base:
        return "must not contain empty levels"
    if any(ch in base for ch in "+#") or any(not ch.isprintable() for ch in base):
        return "must not contain '+', '#' or control characters"
    if len(base.encode("utf-8")) > 128:  # noqa: PLR2004 - leaves room for the rest of the topic
        return "must be at most 128 bytes"
    return None
