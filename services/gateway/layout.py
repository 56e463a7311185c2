"""The page shell shared by every HTML page: Jinja2 templates (services/gateway/templates, autoescaped,
messages from the gettext catalogues of gateway.i18n), mobile-first inline CSS, no external assets."""

from __future__ import annotations

import html
import secrets
from pathlib import Path

import jinja2
from aiohttp import web
from markupsafe import Markup

from gateway.i18n import LANGUAGES, Language, language
from gateway.messages import reason_text

CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC","PingFang SC",sans-serif;
background:#f4f5f7;color:#1d2129}
header{background:#07c160;color:#fff;padding:12px 16px;font-weight:600;display:flex;justify-content:space-between}
header a.lang{color:#fff;font-weight:400}
main{max-width:560px;margin:0 auto;padding:12px}
.card{background:#fff;border-radius:10px;padding:14px 16px;margin:12px 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
h1{font-size:1.25rem;margin:.2em 0 .6em} h2{font-size:1.05rem;margin:.2em 0 .5em}
dl{display:grid;grid-template-columns:auto minmax(0,1fr);gap:4px 12px;margin:0}
dt{color:#6b7280} dd{margin:0;overflow-wrap:anywhere}
.amount{font-size:1.6rem;font-weight:700}
label{display:block;margin:12px 0 4px;font-weight:600}
input[type=text]{width:100%;padding:10px;font-size:1rem;border:1px solid #c9cdd4;border-radius:6px}
input[aria-invalid=true]{border-color:#d93026;background:#fff6f6}
fieldset{border:0;padding:0;margin:0} .choice{display:inline-block;margin-right:18px;font-weight:400}
.error{color:#d93026;font-size:.9rem;margin-top:4px}
.hint{color:#6b7280;font-size:.85rem;overflow-wrap:anywhere}
button,.button{display:block;width:100%;margin-top:18px;padding:12px;font-size:1.05rem;border:0;border-radius:8px;
background:#07c160;color:#fff;text-align:center;text-decoration:none;font-weight:600}
.banner{padding:12px 16px;border-radius:10px;margin:12px 0;font-weight:600}
.ok{background:#e8f8ef;color:#05683a}.warn{background:#fff7e6;color:#8a5a00}.bad{background:#fdecea;color:#a1170d}
.info{background:#eaf2ff;color:#1d4ed8}
table{width:100%;border-collapse:collapse;font-size:.92rem}
td,th{padding:6px 4px;border-bottom:1px solid #eee;text-align:left}
td.num,th.num{text-align:right;white-space:nowrap}
img.qr{display:block;margin:8px auto;width:180px;height:180px;image-rendering:pixelated}
footer{color:#9ca3af;font-size:.8rem;text-align:center;padding:16px}
.taxid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;white-space:nowrap}
"""

# Claim and invoice URLs carry secrets: never send them on as a Referer, never cache the pages,
# never let another site frame them, and run no script but our own inline one.
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


TEMPLATES = Path(__file__).resolve().parent / "templates"


def _environment(lang: Language) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.install_gettext_translations(lang.translations, newstyle=True)  # type: ignore[attr-defined]
    return environment


ENVIRONMENTS = {code: _environment(language(code)) for code in LANGUAGES}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def render(
    lang: Language,
    template: str,
    *,
    title: str,
    status: int = 200,
    refresh_s: int = 0,
    script: str = "",
    script_messages: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    **context: object,
) -> web.Response:
    """A complete HTML page from `template` in `lang`. `script` runs under a per-response CSP nonce and
    reads `script_messages` (already in `lang`) as MESSAGES."""
    nonce = secrets.token_urlsafe(16)
    document = (
        ENVIRONMENTS[lang.code]
        .get_template(template)
        .render(
            lang=lang,
            title=title,
            css=Markup(CSS),  # noqa: S704 - the constant above, no input in it
            refresh_s=refresh_s,
            script=Markup(script),  # noqa: S704 - a constant of the page's module
            script_messages=script_messages or {},
            nonce=nonce,
            **context,
        )
    )
    response = web.Response(text=document, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Language"] = lang.html_lang
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'nonce-{nonce}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    if headers:
        response.headers.update(headers)
    return response


def message_page(
    lang: Language, reason: str, *, status: int, tone: str = "bad", detail: str = "", home: bool = False
) -> web.Response:
    """A short page explaining an outcome by its reason; `reason` is shown for support and read by tests."""
    title, text = reason_text(reason, lang, status)
    if detail and lang.known(detail):
        text = lang.gettext(detail)
    return render(lang, "message.html", title=title, status=status, tone=tone, text=text, reason=reason, home=home)
