"""Raw HTTP/1.1 requests, valid and mutated, and a client that sends exactly those bytes.

The fuzzer writes requests byte by byte (no client library normalises a header, an encoding or a
path) and reads the answer of a `Connection: close` exchange to its end.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field

from tests.fuzz.mutate import hostile_text, invalid_utf8, markup

MAX_RESPONSE_BYTES = 4 << 20


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # False when the bytes are not meant to be HTTP at all (random garbage): closing is an answer then.
    wellformed: bool = True
    raw: bytes | None = None  # when set, sent instead of the rendering of the fields above
    content_length: bool = True

    def render(self) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.path} HTTP/1.1".encode("utf-8", "surrogateescape"), b"Host: 127.0.0.1"]
        lines.append(b"Connection: close")
        lines += [name + b": " + value for name, value in self.headers]
        names = {name.lower() for name, _ in self.headers}
        if self.content_length and b"content-length" not in names and b"transfer-encoding" not in names:
            if self.body or self.method in ("POST", "PUT", "PATCH"):
                lines.append(b"Content-Length: " + str(len(self.body)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


@dataclass
class HttpAnswer:
    status: int | None
    content_type: str
    body: bytes
    headers: dict[str, str]
    elapsed_s: float


def parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    while data.startswith(b"HTTP/1.1 1"):  # interim answers (100 Continue) precede the real one
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None, {}, b""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return int(parts[1]), headers, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def exchange(host: str, port: int, request: HttpRequest, timeout_s: float) -> HttpAnswer:
    """Send the request's bytes, read the answer until the server closes (or `timeout_s` passes)."""
    started = time.perf_counter()
    data = bytearray()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request.render())
            await writer.drain()
            if not request.wellformed and writer.can_write_eof():
                writer.write_eof()
            while len(data) < MAX_RESPONSE_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        status, headers, body = parse_response(bytes(data))
        # An answer that came in full but whose connection stayed open is an answer; none is a hang.
        if status is None:
            return HttpAnswer(None, "", b"", {}, time.perf_counter() - started)
        return HttpAnswer(status, headers.get("content-type", ""), body, headers, time.perf_counter() - started)
    except (ConnectionError, OSError):
        pass
    finally:
        if writer is not None:
            writer.close()
    status, headers, body = parse_response(bytes(data))
    return HttpAnswer(status, headers.get("content-type", ""), body, headers, time.perf_counter() - started)


# --- building and mutating requests ---------------------------------------------------------------


def quote(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def form_body(fields: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in fields).encode()


def multipart_body(fields: list[tuple[str, str]], boundary: str, charset: str = "") -> bytes:
    parts = []
    for name, value in fields:
        ctype = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n{ctype}\r\n'.encode()
            + value.encode("utf-8", "surrogatepass")
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


FORM = b"application/x-www-form-urlencoded"


def mutate_form(rng: random.Random, fields: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], str]:
    """One field-level change of a form: a hostile value, a duplicate, a missing or an unknown field."""
    fields = list(fields)
    choice = rng.randrange(6)
    if choice <= 2 and fields:
        index = rng.randrange(len(fields))
        name, value = fields[index]
        new, what = hostile_text(rng, value)
        fields[index] = (name, new)
        return fields, f"form {name}: {what}"
    if choice == 3 and fields:
        index = rng.randrange(len(fields))
        name, value = fields[index]
        fields.insert(0, (name, hostile_text(rng, value)[0]))
        return fields, f"form {name}: duplicated"
    if choice == 4 and fields:
        index = rng.randrange(len(fields))
        return fields[:index] + fields[index + 1 :], f"form {fields[index][0]}: removed"
    return [*fields, (hostile_text(rng, "extra")[0], markup(rng))], "form: unknown field"


def encode_form(rng: random.Random, request: HttpRequest, fields: list[tuple[str, str]]) -> str:
    """Put `fields` in the request's body in one of the encodings a browser (or an attacker) may use."""
    choice = rng.randrange(12)
    if choice <= 4:
        request.headers.append((b"Content-Type", FORM))
        request.body = form_body(fields)
        return "urlencoded"
    if choice == 5:
        boundary = "----fuzz" + str(rng.randrange(10**8))
        charset = rng.choice(("", "utf-8", "gbk", "bogus-charset", "utf-16", "latin-1"))
        request.headers.append((b"Content-Type", f"multipart/form-data; boundary={boundary}".encode()))
        request.body = multipart_body(fields, boundary, charset)
        return f"multipart charset={charset or 'none'}"
    if choice == 6:
        boundary = "----fuzz" + str(rng.randrange(10**8))
        request.headers.append((b"Content-Type", f"multipart/form-data; boundary={boundary}".encode()))
        body = multipart_body(fields, boundary)
        cut = rng.choice(("truncated", "wrong boundary", "no boundary param", "garbage part"))
        if cut == "truncated":
            body = body[: rng.randrange(max(1, len(body)))]
        elif cut == "wrong boundary":
            body = body.replace(boundary.encode(), b"other")
        elif cut == "no boundary param":
            request.headers[-1] = (b"Content-Type", b"multipart/form-data")
        else:
            body = f"--{boundary}\r\n".encode() + rng.randbytes(64) + f"\r\n--{boundary}--\r\n".encode()
        request.body = body
        return f"broken multipart ({cut})"
    if choice == 7:
        charset = rng.choice(("bogus", "utf-32", "gbk", "latin-1", "utf-7", "x" * 300, '"utf-8'))
        request.headers.append((b"Content-Type", f"application/x-www-form-urlencoded; charset={charset}".encode()))
        request.body = form_body(fields)
        return f"charset={charset[:20]}"
    if choice == 8:
        request.headers.append((b"Content-Type", FORM))
        raw, what = invalid_utf8(rng, form_body(fields).decode())
        percent = rng.random() < 0.5
        request.body = form_body(fields) + b"&x=%FF%FE%ED%A0%80" if percent else raw
        return "percent-encoded invalid UTF-8" if percent else f"raw {what}"
    if choice == 9:
        encoding = rng.choice(("gzip", "deflate", "br", "compress", "identity, gzip", "bogus"))
        request.headers.append((b"Content-Type", FORM))
        request.headers.append((b"Content-Encoding", encoding.encode()))
        plain = form_body(fields)
        if encoding == "gzip" and rng.random() < 0.5:
            request.body = gzip.compress(plain)
        elif encoding == "deflate" and rng.random() < 0.5:
            request.body = zlib.compress(plain)
        else:
            request.body = rng.randbytes(rng.choice((0, 10, 100)))
        return f"Content-Encoding {encoding}"
    if choice == 10:
        request.headers.append((b"Content-Type", FORM))
        request.body = rng.choice((b"%", b"%zz=1", b"=&=&&", b"a=%", b"\x00=\x00", b"a" * 70000, rng.randbytes(200)))
        return "malformed urlencoded body"
    request.headers.append((b"Content-Type", rng.choice((b"application/json", b"text/plain", b"", b"\xff\xfe"))))
    request.body = form_body(fields)
    return "form with another content type"


def mutate_path_segment(rng: random.Random, segment: str) -> tuple[str, str]:
    """A URL path segment (a token, a merchant id) made hostile, percent-encoded or not."""
    choice = rng.randrange(6)
    if choice == 0:
        return segment + rng.choice(
            ("%00", "%0a", "%0d%0a", "%ED%A0%80", "%FF", "%C0%80", "%2F..", "%")
        ), "escape suffix"
    if choice == 1:
        return quote(segment[: rng.randrange(len(segment) + 1)] + "\x00"), "percent-encoded NUL"
    if choice == 2:
        size = rng.choice((201, 300, 1000, 8000, 20000))
        return (segment * (size // max(1, len(segment)) + 1))[:size], f"{size} chars"
    if choice == 3:
        return segment + rng.choice(("/", "/x", "/../..", "//", "?x=1", "#frag", ";p=1")), "path suffix"
    value, what = hostile_text(rng, segment)
    return quote(value), f"segment {what}"


def mutate_http(rng: random.Random, request: HttpRequest) -> str:
    """One HTTP-level mutation of a built request (method, headers, framing, size)."""
    choice = rng.randrange(10)
    if choice == 0:
        request.method = rng.choice(("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "get", "FUZZ", "CONNECT"))
        return f"method {request.method}"
    if choice == 1:
        value = rng.choice((b"\xff\xfe\xfd", b"\xe4\xb8\xad", b"\xed\xa0\x80", b"a\x00b", b"x" * 9000))
        name = rng.choice((b"X-Fuzz", b"Wechatpay-Serial", b"Cookie", b"Accept-Language", b"Referer"))
        request.headers.append((name, value))
        return f"header {name.decode()}: raw bytes"
    if choice == 2:
        request.headers += [(b"X-Fuzz-%d" % i, b"v") for i in range(rng.choice((100, 200)))]
        return "many headers"
    if choice == 3:
        request.headers.append((b"Content-Length", rng.choice((b"-1", b"abc", b"0x10", b"1, 2", b"+5"))))
        return "bad Content-Length"
    if choice == 4:
        request.headers.append((b"Transfer-Encoding", b"chunked"))
        request.content_length = False
        body = request.body
        if rng.random() < 0.5:
            request.body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            return "chunked"
        request.body = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
        return "bad chunk size"
    if choice == 5:
        request.body = request.body + b"x" * rng.choice((65536, 200_000))
        return "oversized body"
    if choice == 6:
        request.headers.append((b"Expect", b"100-continue"))
        return "Expect: 100-continue"
    if choice == 7:
        request.path = request.path + rng.choice(("?", "?a=%FF", "?a=\u00e9", "?" + "a=1&" * 2000, "?%00"))
        request.path = request.path.encode("utf-8").decode("latin-1") if rng.random() < 0.3 else request.path
        return "query junk"
    if choice == 8:
        request.headers.append(
            (b"Content-Type", rng.choice((b"application/x-www-form-urlencoded; charset=\xff", b";;;")))
        )
        return "odd content type"
    request.headers.append((b"Host", b"evil.example"))
    return "second Host header"


def garbage_request(rng: random.Random) -> tuple[HttpRequest, str]:
    """Bytes that are not (or barely) HTTP: the server must answer 4xx or close, never crash."""
    choice = rng.randrange(4)
    if choice == 0:
        raw = rng.randbytes(rng.choice((1, 16, 256, 4096))) + b"\r\n\r\n"
        return HttpRequest("", "", raw=raw, wellformed=False), "random bytes"
    if choice == 1:
        raw = b"GET /" + rng.randbytes(64) + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        return HttpRequest("", "", raw=raw, wellformed=False), "random bytes in the request line"
    if choice == 2:
        raw = b"GET / HTTP/9.9\r\nConnection: close\r\n\r\n" if rng.random() < 0.5 else b"\x16\x03\x01\x02\x00\x01\x00"
        return HttpRequest("", "", raw=raw, wellformed=False), "wrong protocol"
    raw = (
        b"POST /verify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n"
        + rng.randbytes(30)
        + b"\r\n\r\nab"
    )
    return HttpRequest("", "", raw=raw, wellformed=False), "garbage header block"
