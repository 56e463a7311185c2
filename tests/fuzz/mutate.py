"""Mutations of valid inputs: protobuf messages (through their descriptors and at the wire level),
JSON documents, form fields and raw bytes. Pure functions of a `random.Random`, so a seed reproduces
every input.

Every mutator returns the mutated value and a short description ("RecordPaymentRequest.merchant_id:
NUL inserted"), which the fuzzer keeps with a finding.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message

# A marker no page may reflect unescaped: the fuzzer looks for it in every HTML answer.
MARKUP_MARKER = "<fuzz-xss-"
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
INT_EDGES = (
    0, 1, -1, 2, 7, 99, 100, 128, 10**4, 10**6, 10**10, 10**10 + 1, 2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**32,
    2**53 + 1, 2**62, 2**63 - 1, -(2**63), -(2**63) + 1,
)  # fmt: skip
# Timestamp fields outside what google.protobuf.Timestamp allows (0001-01-01 .. 9999-12-31, nanos 0..10^9-1).
TIMESTAMP_EDGES = (
    (0, 10**9), (0, -1), (1_700_000_000, 10**9), (1_700_000_000, 2**31 - 1), (253402300800, 0), (-62135596801, 0),
    (2**63 - 1, 0), (-(2**63), 0), (2**62, 999_999_999), (-1, 0), (0, 0), (4102444800, 0), (946684799, 999_999_999),
)  # fmt: skip
_SPECIAL_CHARS = (
    "\x00", "\x01", "\x07", "\x08", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\xa0", "\u00ad", "\u200b", "\u200d",
    "\u202e", "\u2028", "\u2029", "\u3000", "\ufeff", "\ufffd", "\uffff", "\ue000", "\U000e0001", "\U0010ffff",
    "\u0301", "\u0378", "😀", "％", "＜", "¥", "￥", "²", "١", "１", "\\", "'", '"', "%", "{", "}", "/", "&", ";",
)  # fmt: skip
_WORDS = (
    "", " ", "0", "-0", "-1", "00000000000000000000", "١٢٣٤٥٦٧٨٩٠١٢٣٤٥٦٧٨٩٠",
    "１２３４５６７８９０１２３４５６７８９０",
    "1e309", "NaN", "Infinity", "0x7fffffff", "9" * 40, "null", "true", "[]", "{}", "%s%n%x", "{0}{1}", "' OR '1'='1",
    "'; DROP TABLE payments; --", "../../../etc/passwd", "%00", "%2e%2e%2f", "\\u0000", "Å", "Å", "ﬁ", "ǅ",
    "ß", "İ", "e\u0301" * 40, "\u202egnp.exe", "Ω", "Ω", "测试公司", "A" * 129, "x" * 200, "0" * 64,
)  # fmt: skip


def markup(rng: random.Random) -> str:
    """Markup that must come back escaped: it carries the marker the fuzzer looks for."""
    tag = f"{MARKUP_MARKER}{rng.randrange(16**6):06x}>"
    return rng.choice((tag, f'"><{tag[1:]}<script>1</script>', f"'{tag}", f"</textarea>{tag}"))


def hostile_text(rng: random.Random, base: str) -> tuple[str, str]:
    """A string derived from `base` (a valid value) that an edge must refuse or accept precisely."""
    choice = rng.randrange(20)
    if choice == 19:
        token = reencoded_token(rng, base)
        if token is not None:
            return token, "token re-encoded with an out-of-range number"
        choice = 0
    if choice == 18:
        size = rng.choice((1, 20, 32, 64, 100, 128, 200))
        unit = base or "9"
        return (unit * (size // len(unit) + 1))[:size] + "\n", f"{size} chars and a newline"
    if choice == 0:
        return base + rng.choice(("\n", "\r\n", "\r", "\x00", " ", "\t")), "suffix"
    if choice == 1:
        pos = rng.randint(0, len(base))
        return base[:pos] + "\x00" + base[pos:], "NUL inserted"
    if choice == 2:
        pos = rng.randint(0, len(base))
        char = rng.choice(_SPECIAL_CHARS)
        return base[:pos] + char + base[pos:], f"U+{ord(char):04X} inserted"
    if choice == 3:
        size = rng.choice((64, 65, 128, 129, 200, 201, 256, 1000, 4096, 65536, 1 << 20))
        unit = base or "9"
        return (unit * (size // len(unit) + 1))[:size], f"repeated to {size} chars"
    if choice == 4:
        return "", "empty"
    if choice == 5:
        return markup(rng), "markup"
    if choice == 6:
        word = rng.choice(_WORDS)
        return word, f"replaced by {word[:20]!r}"
    if choice == 7 and base:
        pos = rng.randrange(len(base))
        char = chr(rng.choice((rng.randrange(0x20, 0x7F), rng.randrange(0x80, 0x800), rng.randrange(0x3000, 0xA000))))
        return base[:pos] + char + base[pos + 1 :], "one char replaced"
    if choice == 8:
        return base.translate(str.maketrans("0123456789", "０１２３４５６７８９")), "fullwidth digits"
    if choice == 9:
        return base.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")), "Arabic-Indic digits"
    if choice == 10:
        return " " + base + " ", "padded with spaces"
    if choice == 11:
        return base.lower() if rng.random() < 0.5 else base.upper(), "case changed"
    if choice == 12 and base:
        pos = rng.randrange(len(base))
        return base[:pos] + base[pos + 1 :], "one char removed"
    if choice == 13:
        return base + base, "doubled"
    if choice == 14:
        return "".join(ch + "\u0301" for ch in base[:50]) or "\u0301", "combining marks"
    if choice == 15:
        length = rng.choice((1, 8, 20, 64))
        alphabet = string.printable if rng.random() < 0.5 else "".join(map(chr, range(0x20, 0x2FF)))
        return "".join(rng.choice(alphabet) for _ in range(length)), "random text"
    if choice == 16:
        return base + markup(rng), "markup suffix"
    return base + "\u00a0", "NBSP suffix"


def reencoded_token(rng: random.Random, base: str) -> str | None:
    """`base` read as a base64 token holding a number (a page token, say), re-encoded with its last
    number replaced by one out of range or malformed; None when `base` is no such token."""
    import base64
    import re

    try:
        text = base64.urlsafe_b64decode(base + "=" * (-len(base) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if not re.search(r"[0-9]", text):
        return None
    number = rng.choice(("99999999999999999999", "-1", "9223372036854775808", "1e400", "0x10", "٣"))
    return base64.urlsafe_b64encode(re.sub(r"[0-9]+(?=[^0-9]*\Z)", number, text, count=1).encode()).decode()


def invalid_utf8(rng: random.Random, base: str) -> tuple[bytes, str]:
    """Bytes that are not UTF-8: a lone surrogate (CESU), an overlong form, a stray continuation byte."""
    raw = base.encode()
    bad = rng.choice(
        (b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xff", b"\x80", b"\xf4\x90\x80\x80", b"\xe2\x82")
    )
    pos = rng.randint(0, len(raw))
    return raw[:pos] + bad + raw[pos:], f"invalid UTF-8 {bad.hex()}"


def hostile_int(rng: random.Random, base: int) -> tuple[int, str]:
    choice = rng.randrange(4)
    if choice == 0:
        value = rng.choice(INT_EDGES)
    elif choice == 1:
        value = -base if base else -1
    elif choice == 2:
        value = base + rng.choice((-1, 1))
    else:
        value = base * rng.choice((100, 10**6, -1))
    return value, f"int {value}"


# --- protobuf wire format -----------------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer (negative int64 values as their two's complement)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def field_bytes(number: int, wire_type: int, payload: bytes | int) -> bytes:
    """One encoded field: varint payloads as int, length-delimited ones as bytes, fixed ones as bytes."""
    if wire_type == VARINT:
        assert isinstance(payload, int)
        return tag(number, VARINT) + varint(payload)
    assert isinstance(payload, bytes)
    if wire_type == LEN:
        return tag(number, LEN) + varint(len(payload)) + payload
    return tag(number, wire_type) + payload


def nest(path: list[int], inner: bytes) -> bytes:
    """`inner` (encoded fields) placed inside the sub-messages along `path` (outermost first).

    A second occurrence of a singular message field merges into the first, and a later scalar wins,
    so appending this to a valid message overrides one nested field and keeps everything else.
    """
    for number in reversed(path):
        inner = field_bytes(number, LEN, inner)
    return inner


_WIRE_OF = {
    pb_descriptor.FieldDescriptor.TYPE_DOUBLE: I64,
    pb_descriptor.FieldDescriptor.TYPE_FIXED64: I64,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED64: I64,
    pb_descriptor.FieldDescriptor.TYPE_FLOAT: I32,
    pb_descriptor.FieldDescriptor.TYPE_FIXED32: I32,
    pb_descriptor.FieldDescriptor.TYPE_SFIXED32: I32,
    pb_descriptor.FieldDescriptor.TYPE_STRING: LEN,
    pb_descriptor.FieldDescriptor.TYPE_BYTES: LEN,
    pb_descriptor.FieldDescriptor.TYPE_MESSAGE: LEN,
}
_INT_RANGE = {
    pb_descriptor.FieldDescriptor.TYPE_INT64: INT64,
    pb_descriptor.FieldDescriptor.TYPE_SINT64: INT64,
    pb_descriptor.FieldDescriptor.TYPE_INT32: INT32,
    pb_descriptor.FieldDescriptor.TYPE_SINT32: INT32,
    pb_descriptor.FieldDescriptor.TYPE_ENUM: INT32,
    pb_descriptor.FieldDescriptor.TYPE_UINT32: UINT32,
    pb_descriptor.FieldDescriptor.TYPE_UINT64: UINT64,
}


def _is_repeated(field: pb_descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _fields_with_paths(
    message: Message, prefix: list[int], names: list[str], depth: int = 0
) -> list[tuple[list[int], list[str], Message, pb_descriptor.FieldDescriptor]]:
    """Every field of `message` and of its sub-messages (set or not, one level into unset ones)."""
    found = []
    for field in message.DESCRIPTOR.fields:
        found.append((prefix, names, message, field))
        if field.type == pb_descriptor.FieldDescriptor.TYPE_MESSAGE and depth < 4:
            if _is_repeated(field):
                children = list(getattr(message, field.name))[:2]
            else:
                children = [getattr(message, field.name)]
            for child in children:
                found += _fields_with_paths(child, [*prefix, field.number], [*names, field.name], depth + 1)
    return found


def _timestamp_field(field: pb_descriptor.FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp")


def mutate_field(rng: random.Random, request: Message) -> tuple[bytes, str]:
    """One field-level mutation of a valid request, serialized: through the message API where the
    value is representable, else appended at the wire level (invalid UTF-8, out-of-range varints,
    a second member of a oneof, wrong wire types)."""
    candidates = _fields_with_paths(request, [], [])
    if not candidates:  # a message without fields (HealthListRequest): only its bytes can vary
        return mutate_structure(rng, request)
    path, names, owner, field = rng.choice(candidates)
    label = ".".join([request.DESCRIPTOR.name, *names, field.name])
    base_bytes = request.SerializeToString()
    kind = field.type
    if _timestamp_field(field):
        seconds, nanos = rng.choice(TIMESTAMP_EDGES)
        inner = field_bytes(1, VARINT, seconds) + field_bytes(2, VARINT, nanos)
        return base_bytes + nest([*path, field.number], inner), f"{label}: timestamp seconds={seconds} nanos={nanos}"
    if kind == pb_descriptor.FieldDescriptor.TYPE_STRING:
        current = getattr(owner, field.name)
        base = (current[0] if current else "") if _is_repeated(field) else current
        if rng.random() < 0.15:
            raw, what = invalid_utf8(rng, base)
            return base_bytes + nest(path, field_bytes(field.number, LEN, raw)), f"{label}: {what}"
        value, what = hostile_text(rng, base)
        raw = value.encode("utf-8", "surrogatepass")
        if _is_repeated(field) and rng.random() < 0.3:
            count = rng.choice((2, 100, 1001, 10000)) if len(raw) <= 200 else 2
            many = b"".join(field_bytes(field.number, LEN, raw) for _ in range(count))
            return base_bytes + nest(path, many), f"{label}: {count} more elements, {what}"
        return base_bytes + nest(path, field_bytes(field.number, LEN, raw)), f"{label}: {what}"
    if kind == pb_descriptor.FieldDescriptor.TYPE_BYTES:
        size = rng.choice((0, 1, 31, 32, 33, 64, 1000, 100_000))
        raw = rng.randbytes(size)
        return base_bytes + nest(path, field_bytes(field.number, LEN, raw)), f"{label}: {size} random bytes"
    if kind == pb_descriptor.FieldDescriptor.TYPE_BOOL:
        value = rng.choice((0, 1, 2, 2**64 - 1))
        return base_bytes + nest(path, field_bytes(field.number, VARINT, value)), f"{label}: bool varint {value}"
    if kind in _INT_RANGE:
        current = getattr(owner, field.name)
        base_int = (current[0] if current else 0) if _is_repeated(field) else int(current)
        value, what = hostile_int(rng, base_int)
        low, high = _INT_RANGE[kind]
        if rng.random() < 0.1:
            value, what = rng.choice((2**64 - 1, 2**63, 2**40, 2**32)), "varint beyond the field's range"
        elif not low <= value <= high:
            value = max(low, min(high, value))
        if kind in (pb_descriptor.FieldDescriptor.TYPE_SINT32, pb_descriptor.FieldDescriptor.TYPE_SINT64):
            value = (value << 1) ^ (value >> 63)
        return base_bytes + nest(path, field_bytes(field.number, VARINT, value)), f"{label}: {what}"
    if kind == pb_descriptor.FieldDescriptor.TYPE_MESSAGE:
        choice = rng.randrange(3)
        if choice == 0:  # the sub-message as garbage
            raw = rng.randbytes(rng.choice((1, 5, 40)))
            return base_bytes + nest(path, field_bytes(field.number, LEN, raw)), f"{label}: random sub-message bytes"
        if choice == 1:  # the same sub-message many times (repeated: many elements; singular: merged)
            child = getattr(owner, field.name)
            one = (child[0] if len(child) else None) if _is_repeated(field) else child
            raw = one.SerializeToString() if one is not None else b""
            count = rng.choice((2, 101, 1000)) if len(raw) <= 2000 else 2
            many = b"".join(field_bytes(field.number, LEN, raw) for _ in range(count))
            return base_bytes + nest(path, many), f"{label}: repeated {count} times"
        return base_bytes + nest(path, field_bytes(field.number, VARINT, 1)), f"{label}: wrong wire type"
    wire = _WIRE_OF.get(kind, I64)
    payload = rng.randbytes(8 if wire == I64 else 4)
    return base_bytes + nest(path, field_bytes(field.number, wire, payload)), f"{label}: random fixed value"


def both_oneof_members(rng: random.Random, request: Message) -> tuple[bytes, str] | None:
    for oneof in request.DESCRIPTOR.oneofs:
        if len(oneof.fields) >= 2:
            extra = b"".join(
                field_bytes(f.number, LEN, f"x{rng.randrange(10**6)}".encode())
                for f in oneof.fields
                if f.type == pb_descriptor.FieldDescriptor.TYPE_STRING
            )
            return request.SerializeToString() + extra, f"{request.DESCRIPTOR.name}: every member of oneof {oneof.name}"
    return None


def mutate_structure(rng: random.Random, request: Message) -> tuple[bytes, str]:
    """Message-wide mutations: unknown fields, deep groups, oneofs, truncation, bit flips, garbage."""
    raw = request.SerializeToString()
    name = request.DESCRIPTOR.name
    choice = rng.randrange(11)
    if choice == 0:
        number = rng.choice((15, 99, 1000, 536870911))
        wire = rng.choice((VARINT, LEN, I32, I64))
        payload: bytes | int = rng.randrange(2**32) if wire == VARINT else rng.randbytes(4 if wire == I32 else 8)
        if wire == LEN:
            payload = rng.randbytes(rng.choice((0, 3, 300)))
        return raw + field_bytes(number, wire, payload), f"{name}: unknown field {number} wire type {wire}"
    if choice == 1:
        depth = rng.choice((10, 99, 100, 101, 1000, 100_000))
        return raw + tag(77, SGROUP) * depth + tag(77, EGROUP) * depth, f"{name}: unknown group nested {depth} deep"
    if choice == 2:
        both = both_oneof_members(rng, request)
        if both is not None:
            return both
        return raw + raw, f"{name}: every field twice"
    if choice == 3 and raw:
        cut = rng.randrange(len(raw))
        return raw[:cut], f"{name}: truncated to {cut} of {len(raw)} bytes"
    if choice == 4 and raw:
        data = bytearray(raw)
        for _ in range(rng.choice((1, 2, 8))):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data), f"{name}: bits flipped"
    if choice == 5:
        pos = rng.randint(0, len(raw))
        junk = rng.randbytes(rng.choice((1, 2, 16)))
        return raw[:pos] + junk + raw[pos:], f"{name}: {len(junk)} bytes inserted at {pos}"
    if choice == 6:
        return raw + tag(rng.randrange(1, 20), LEN) + varint(
            rng.choice((2**31, 2**40, 1000))
        ), f"{name}: length past end"
    if choice == 7:
        return raw + tag(1, rng.choice((6, 7))), f"{name}: invalid wire type"
    if choice == 8:
        return raw + b"\xff" * rng.choice((10, 11)), f"{name}: overlong varint"
    if choice == 9:
        size = rng.choice((1 << 20, 3 << 20, (4 << 20) + 1))
        return raw + field_bytes(999, LEN, b"\x00" * size), f"{name}: {size}-byte unknown field"
    return b"", f"{name}: empty message"


def random_bytes(rng: random.Random) -> tuple[bytes, str]:
    size = rng.choice((1, 2, 3, 7, 16, 64, 256, 4096))
    return rng.randbytes(size), f"{size} random bytes"


def mutate_message(rng: random.Random, request: Message) -> tuple[bytes, str]:
    """A request body for a gRPC method: the valid request, a mutation of it, or random bytes."""
    roll = rng.random()
    if roll < 0.06:
        return request.SerializeToString(), f"{request.DESCRIPTOR.name}: valid"
    if roll < 0.66:
        raw, what = mutate_field(rng, request)
        if rng.random() < 0.25:  # a second mutation on top (parsed from the mutated bytes when it parses)
            again = type(request)()
            try:
                again.ParseFromString(raw)
            except Exception:  # unparseable bytes are an input of their own
                return raw, what
            raw2, what2 = mutate_field(rng, again)
            return raw2, f"{what}; {what2}"
        return raw, what
    if roll < 0.9:
        return mutate_structure(rng, request)
    return random_bytes(rng)


# --- JSON ---------------------------------------------------------------------------------------


def _json_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _json_paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _json_paths(child, (*path, index))
    return paths


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        copy[head] = _replace(value[head], rest, new)
        return copy
    copy_list = list(value)
    copy_list[head] = _replace(value[head], rest, new)
    return copy_list


def deep(depth: int, kind: str = "list") -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


def mutate_json(rng: random.Random, document: dict[str, Any]) -> tuple[str, str]:
    """JSON text of a mutated `document`: hostile strings (lone surrogates too, as \\ud800 escapes),
    wrong types, huge numbers, deep nesting, duplicate and unknown keys, removed keys."""
    paths = [p for p in _json_paths(document) if p]
    path = rng.choice(paths) if paths else ()
    name = ".".join(map(str, path)) or "document"
    current: Any = document
    for step in path:
        current = current[step]
    choice = rng.randrange(12)
    if choice == 0:
        text, what = hostile_text(rng, current if isinstance(current, str) else str(current))
        return json.dumps(_replace(document, path, text), ensure_ascii=rng.random() < 0.5), f"{name}: {what}"
    if choice == 1:
        surrogate = rng.choice(("\ud800", "\udfff", "\udc00x", "a\ud83d"))
        base = current if isinstance(current, str) else ""
        return json.dumps(_replace(document, path, base + surrogate)), f"{name}: lone surrogate"
    if choice == 2:
        new = rng.choice((None, True, False, 0, -1, 1.5, 1e308, "", [], {}, [1], {"a": 1}, "1", 10**30, -(10**30)))
        return json.dumps(_replace(document, path, new)), f"{name}: replaced by {json.dumps(new)}"
    if choice == 3:
        depth = rng.choice((100, 1000, 5000, 100_000))
        placeholder = "__FUZZ_DEEP__"
        text = json.dumps(_replace(document, path, placeholder)).replace(
            json.dumps(placeholder), deep(depth, rng.choice(("list", "dict")))
        )
        return text, f"{name}: nested {depth} deep"
    if choice == 4 and len(path) >= 1:
        parent_path, key = path[:-1], path[-1]
        parent: Any = document
        for step in parent_path:
            parent = parent[step]
        if isinstance(parent, dict):
            reduced = {k: v for k, v in parent.items() if k != key}
            return json.dumps(_replace(document, parent_path, reduced)), f"{name}: removed"
    if choice == 5:
        text = json.dumps(document)
        key = path[-1] if path and isinstance(path[-1], str) else "id"
        dup = f'"{key}": {json.dumps(hostile_text(rng, "x")[0])}, '
        return "{" + dup + text[1:], f"{key}: duplicate key first"
    if choice == 6:
        return json.dumps(_replace(document, path, rng.choice((10**400, 2**63, -(2**63) - 1)))), f"{name}: huge int"
    if choice == 7:
        return json.dumps(_replace(document, path, float("nan"))), f"{name}: NaN"
    if choice == 8:
        return json.dumps({**document, f"unknown_{rng.randrange(100)}": markup(rng)}), "unknown key"
    if choice == 9:
        text = json.dumps(document)
        cut = rng.randrange(max(1, len(text)))
        return text[:cut], f"truncated at {cut}"
    if choice == 10:
        return json.dumps([document]), "wrapped in a list"
    return json.dumps(_replace(document, path, rng.choice((1e400, -1e400)) if rng.random() < 0.5 else "1e400")), (
        f"{name}: infinity"
    )


def pick(rng: random.Random, options: list[tuple[float, Callable[[], Any]]]) -> Any:
    """Run one of the weighted `options`."""
    total = sum(weight for weight, _ in options)
    roll = rng.random() * total
    for weight, option in options:
        roll -= weight
        if roll <= 0:
            return option()
    return options[-1][1]()
