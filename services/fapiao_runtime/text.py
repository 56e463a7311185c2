"""The one validation of text that arrives from outside: in a request field, a form or a notification.

Every edge (gRPC methods, the webhook, the claim and verification pages) checks the text it accepts
here before it goes further: PostgreSQL's text refuses NUL, a lone UTF-16 surrogate cannot be encoded
at all, and no invoice should carry control or invisible characters. Patterns that check a format use
`fullmatch` (or `\\Z`), never `$`, which also matches before a final newline.
"""

from __future__ import annotations

import unicodedata

from fapiao_runtime.errors import InvalidArgument


def bad_character(value: str, *, multiline: bool = False) -> str | None:
    """The first character of `value` no accepted text may hold, else None: control characters (Cc,
    except tab and line breaks when `multiline`), format characters (Cf: bidi overrides, zero-width),
    surrogates (Cs), private use (Co), unassigned code points (Cn) and the line/paragraph separators."""
    for char in value:
        category = unicodedata.category(char)
        if category.startswith("C") or category in ("Zl", "Zp"):
            if multiline and char in "\t\n\r":
                continue
            return char
    return None


def check_text(value: str, field: str, *, max_chars: int, multiline: bool = False) -> str:
    """`value` in Unicode normal form C, checked: at most `max_chars` characters (code points, after
    normalising) and no character `bad_character` names. Raises InvalidArgument with reason
    INVALID_CHARACTERS or FIELD_TOO_LONG, naming `field`."""
    if bad_character(value, multiline=multiline) is not None:
        raise InvalidArgument("INVALID_CHARACTERS", f"{field} contains a control or non-printable character")
    normal = unicodedata.normalize("NFC", value)
    if len(normal) > max_chars:
        raise InvalidArgument("FIELD_TOO_LONG", f"{field} has more than {max_chars} characters")
    return normal


def lone_surrogate(value: str) -> bool:
    """Whether `value` holds a lone UTF-16 surrogate (from a "\\ud800" JSON escape, or bytes that are
    not UTF-8 read with surrogateescape): no UTF-8 text can hold one. For text passed on unchecked
    (fields of a document that are not kept), where `bad_character` would refuse too much."""
    if value.isascii():
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False
