"""The language of a page or API answer, its message catalogue, and how dates, money and tax ids read in it.

Simplified Chinese is the default; English is chosen by the `lang` query parameter (which also sets the
`lang` cookie, the switch on every page), then that cookie, then the best of `Accept-Language`.
Messages come from gettext catalogues (services/gateway/locale/<locale>/LC_MESSAGES/messages.po, msgids
in English), compiled from the .po with Babel when the module is imported: nothing binary is kept in
the repository and an edited catalogue is read on the next start. `pybabel extract -F babel.cfg` (see
docs/gateway.md) lists every message of the templates and of the code marked with `N_`.
"""

from __future__ import annotations

import datetime as dt
import gettext
import io
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from gateway.money import yuan_display

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
ZH = "zh"
EN = "en"
DEFAULT = ZH
LANGUAGES = (ZH, EN)
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600
# A header is read only so far: a hostile Accept-Language costs nothing.
MAX_ACCEPT_LANGUAGE_CHARS = 512
MAX_ACCEPT_LANGUAGE_ENTRIES = 16
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
_BABEL_LOCALE = {ZH: "zh_Hans_CN", EN: "en"}
# How each language writes a calendar day and an instant (Beijing time).
_DATE_PATTERN = {ZH: "yyyy年MM月dd日", EN: "d MMM y"}
_DATETIME_PATTERN = {ZH: "yyyy年MM月dd日 HH:mm", EN: "d MMM y, HH:mm"}
_HTML_LANG = {ZH: "zh-CN", EN: "en"}


def N_(message: str) -> str:
    """Marks `message` for `pybabel extract`; it is translated where it is shown."""
    return message


def _load(language: str) -> gettext.NullTranslations:
    po_path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not po_path.exists():
        return gettext.NullTranslations()
    with po_path.open("rb") as po_file:
        catalog = read_po(po_file, locale=_BABEL_LOCALE[language])
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


TRANSLATIONS: dict[str, gettext.NullTranslations] = {language: _load(language) for language in LANGUAGES}


@dataclass(frozen=True)
class Language:
    """One language's messages and formats, as a handler or a template uses them."""

    code: str

    @property
    def translations(self) -> gettext.NullTranslations:
        return TRANSLATIONS[self.code]

    @property
    def html_lang(self) -> str:
        return _HTML_LANG[self.code]

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def known(self, message: str) -> bool:
        """Whether the catalogue has `message` (English always has it: its msgids are English)."""
        return self.code == EN or self.translations.gettext(message) != message

    def date(self, yyyymmdd: str) -> str:
        """A calendar day written out: "20261208" -> 2026年12月08日 / 8 Dec 2026; other text as it is."""
        if not re.fullmatch(r"[0-9]{8}", yyyymmdd):
            return yyyymmdd
        try:
            day = dt.date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
        except ValueError:
            return yyyymmdd
        return format_date(day, _DATE_PATTERN[self.code], locale=_BABEL_LOCALE[self.code])

    def instant(self, seconds: int) -> str:
        """A protobuf timestamp's seconds in Beijing time: 2026年12月24日 17:30; "" for none."""
        if not seconds:
            return ""
        at = dt.datetime.fromtimestamp(seconds, BEIJING)
        return format_datetime(at, _DATETIME_PATTERN[self.code], tzinfo=BEIJING, locale=_BABEL_LOCALE[self.code])

    @staticmethod
    def money(fen: int) -> str:
        """¥1,234.50 (the yuan sign, thousands separators, two decimals) in both languages."""
        return yuan_display(fen)

    @staticmethod
    def tax_id(code: str) -> str:
        """A unified social credit code as printed on a licence: upper case, one block of 18."""
        return code.strip().upper()


LOCALE_KEY: web.RequestKey[Language] = web.RequestKey("locale", Language)


def language(code: str) -> Language:
    return Language(code if code in LANGUAGES else DEFAULT)


def _chosen(value: str | None) -> str | None:
    if not value:
        return None
    primary = value.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in LANGUAGES else None


def from_accept_language(header: str) -> str | None:
    """The supported language `header` prefers most (q-values honoured, the first one on a tie)."""
    best: tuple[float, int, str] | None = None
    for position, entry in enumerate(header[:MAX_ACCEPT_LANGUAGE_CHARS].split(",")[:MAX_ACCEPT_LANGUAGE_ENTRIES]):
        tag, _, params = entry.partition(";")
        chosen = _chosen(tag)
        if chosen is None:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:7])
            except ValueError:
                continue
        if not 0 < quality <= 1:
            continue
        if best is None or (quality, -position) > (best[0], best[1]):
            best = (quality, -position, chosen)
    return best[2] if best else None


def negotiate(request: web.BaseRequest) -> Language:
    """`lang` query parameter, then `lang` cookie, then Accept-Language, then Chinese."""
    code = (
        _chosen(request.query.get(LANG_COOKIE))
        or _chosen(request.cookies.get(LANG_COOKIE))
        or from_accept_language(request.headers.get("Accept-Language", ""))
        or DEFAULT
    )
    return Language(code)


def of(request: web.BaseRequest) -> Language:
    """The request's language, negotiated once."""
    chosen = request.get(LOCALE_KEY)
    if chosen is None:
        chosen = negotiate(request)
        request[LOCALE_KEY] = chosen
    return chosen


def remember_choice(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """A `lang` query parameter becomes the cookie, so the next page keeps the language."""
    chosen = _chosen(request.query.get(LANG_COOKIE))
    if chosen is not None and chosen != _chosen(request.cookies.get(LANG_COOKIE)) and not response.prepared:
        response.set_cookie(LANG_COOKIE, chosen, max_age=LANG_COOKIE_MAX_AGE_S, path="/", httponly=True, samesite="Lax")
    response.headers.setdefault("Content-Language", of(request).html_lang)
    vary = response.headers.get("Vary", "")
    if "Accept-Language" not in vary:
        response.headers["Vary"] = f"{vary}, Accept-Language, Cookie" if vary else "Accept-Language, Cookie"
