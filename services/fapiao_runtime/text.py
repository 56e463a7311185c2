"""The one validation of text that arrives from outside: in a request field, a form or a notification.

Every edge (gRPC methods, the webhook, the claim and verification pages) checks the text it accepts
here before it goes further: PostgreSQL's text refuses NUL, a lone UTF-16 surrogate cannot be encoded
at all, and no invoice should carry control or invisible characters. Patterns that check a format use
`fullmatch` (or `\\Z`), never `$`, which also matches before a final newline.

Every gRPC request passes `check_message_text` as it is decoded (fapiao_runtime.grpc_server): each
string field, at any depth, is one line of text. A field that may hold tabs and line breaks (free text
such as remarks) is named in `MULTILINE_FIELDS` by its full proto name; no request field of today's
protos is: reasons are codes or one line of platform text, names and ids are one line, as the domain
rules also require.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fapiao_runtime.errors import InvalidArgument

# Full proto names (package.Message.field) of request string fields that may span lines.
MULTILINE_FIELDS: frozenset[str] = frozenset()


def bad_character(value: str, *, multiline: bool = False) -> str | None:
    """The first character of `value` no accepted text may hold, else None: control characters (Cc,
    except tab and line breaks when `multiline`), format characters (Cf: bidi overrides, zero-width),
    surrogates (Cs), private use (Co), unassigned code points (Cn) and the line/paragraph separators."""
    if value.isprintable():  # in C: printable text holds none of these (the common case, however long)
        return None
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


def check_message_text(message: Message, multiline_fields: frozenset[str] = MULTILINE_FIELDS) -> None:
    """Every string field set in `message`, at any depth (nested, repeated and map fields), checked
    with `bad_character`; tabs and line breaks only in `multiline_fields`. Raises InvalidArgument
    INVALID_CHARACTERS naming the field's path (e.g. `items[2].name`)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            strings: Iterable[str] = value if field.is_repeated else (value,)
            multiline = field.full_name in multiline_fields
            for index, text in enumerate(strings):
                if bad_character(text, multiline=multiline) is not None:
                    where = f"{field.name}[{index}]" if field.is_repeated else field.name
                    raise InvalidArgument(
                        "INVALID_CHARACTERS", f"{where} contains a control or non-printable character"
                    )
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _check_map(field, value, multiline_fields)
            elif field.is_repeated:
                for index, item in enumerate(value):
                    _check_nested(item, f"{field.name}[{index}]", multiline_fields)
            else:
                _check_nested(value, field.name, multiline_fields)


def _check_nested(message: Message, path: str, multiline_fields: frozenset[str]) -> None:
    try:
        check_message_text(message, multiline_fields)
    except InvalidArgument as exc:
        raise InvalidArgument(exc.reason, f"{path}.{exc.message}") from None


def _check_map(field: FieldDescriptor, entries: object, multiline_fields: frozenset[str]) -> None:
    entry = field.message_type
    assert entry is not None
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for key, value in entries.items():  # type: ignore[attr-defined]
        if key_field.type == FieldDescriptor.TYPE_STRING and bad_character(key) is not None:
            raise InvalidArgument(
                "INVALID_CHARACTERS", f"{field.name} has a key with a control or non-printable character"
            )
        if value_field.type == FieldDescriptor.TYPE_STRING:
            if bad_character(value, multiline=value_field.full_name in multiline_fields) is not None:
                raise InvalidArgument(
                    "INVALID_CHARACTERS", f"{field.name}[{key!r}] contains a control or non-printable character"
                )
        elif value_field.message_type is not None:
            _check_nested(value, f"{field.name}[{key!r}]", multiline_fields)


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
