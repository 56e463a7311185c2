"""Reading the body of a form post (the claim and verification pages) or of a JSON request (the API),
refusing what is not one.

Browsers post these forms as application/x-www-form-urlencoded in UTF-8 (the pages are UTF-8);
multipart/form-data is read too. Anything else gets a 4xx with its reason and nothing is parsed:
a compressed body (415), another charset (415), another media type (415), a body over
MAX_FORM_BYTES (413), bytes that are not UTF-8 or a broken multipart body (400). The pages check
the values with `fapiao_runtime.text.check_text`.
"""

from __future__ import annotations

import json
import logging
import warnings

from aiohttp import web
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.http_edge import content_encoding

log = logging.getLogger(__name__)

# Four fields of a few hundred characters, percent-encoded: far below this.
MAX_FORM_BYTES = 16 * 1024
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
UTF8 = frozenset({"utf-8", "utf8"})
# aiohttp warns (on stderr, the log) about each malformed Content-Disposition it reads; such a part
# has no name and the form is refused as MALFORMED_FORM, so the warning would only flood the log.
warnings.filterwarnings("ignore", category=BadContentDispositionHeader)
warnings.filterwarnings("ignore", category=BadContentDispositionParam)


class FormRefused(InvalidArgument):
    """A form body the page does not read; `http_status` is 400, 413 or 415."""

    def __init__(self, http_status: int, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.http_status = http_status


async def read_form(request: web.Request) -> dict[str, str]:
    """The text fields of a form post (file parts are ignored). Raises FormRefused."""
    encoding = content_encoding(request)
    if encoding is not None:
        raise FormRefused(415, "UNSUPPORTED_CONTENT_ENCODING", "form posts are not compressed")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise FormRefused(413, "BODY_TOO_LARGE", f"a form post has at most {MAX_FORM_BYTES} bytes")
    if not request.body_exists:
        return {}
    charset = request.charset
    if charset is not None and charset.lower() not in UTF8:
        raise FormRefused(415, "UNSUPPORTED_CHARSET", "forms are posted in UTF-8")
    if request.content_type not in FORM_TYPES:
        raise FormRefused(415, "UNSUPPORTED_MEDIA_TYPE", "not a form post")
    try:
        posted = await request.clone(client_max_size=MAX_FORM_BYTES).post()
    except web.HTTPRequestEntityTooLarge:
        raise FormRefused(413, "BODY_TOO_LARGE", f"a form post has at most {MAX_FORM_BYTES} bytes") from None
    except Exception as error:  # whatever a hostile body makes the parser raise is the client's error
        log.info("form refused: %s", type(error).__name__, extra={"reason": "MALFORMED_FORM"})
        raise FormRefused(400, "MALFORMED_FORM", "the form body cannot be read") from None
    return {key: value for key, value in posted.items() if isinstance(value, str)}


async def read_json(request: web.Request) -> dict[str, object]:
    """A JSON object body (the API's requests), with the same bounds as a form. Raises FormRefused."""
    if content_encoding(request) is not None:
        raise FormRefused(415, "UNSUPPORTED_CONTENT_ENCODING", "request bodies are not compressed")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise FormRefused(413, "BODY_TOO_LARGE", f"a request body has at most {MAX_FORM_BYTES} bytes")
    charset = request.charset
    if charset is not None and charset.lower() not in UTF8:
        raise FormRefused(415, "UNSUPPORTED_CHARSET", "JSON is sent in UTF-8")
    try:
        body = await request.content.read(MAX_FORM_BYTES + 1)
    except Exception as error:  # a broken chunked body is the client's error
        log.info("JSON body refused: %s", type(error).__name__, extra={"reason": "MALFORMED_JSON"})
        raise FormRefused(400, "MALFORMED_JSON", "the request body cannot be read") from None
    if len(body) > MAX_FORM_BYTES:
        raise FormRefused(413, "BODY_TOO_LARGE", f"a request body has at most {MAX_FORM_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormRefused(400, "MALFORMED_JSON", "the request body is not JSON") from None
    if not isinstance(value, dict):
        raise FormRefused(400, "MALFORMED_JSON", "the request body is a JSON object")
    return value


async def read_input(request: web.Request) -> dict[str, object]:
    """A JSON object when the body is application/json, else the form's fields. Raises FormRefused."""
    if request.body_exists and request.content_type == "application/json":
        return await read_json(request)
    return dict(await read_form(request))
