"""HTML of the claim form and of the issued-invoice page."""

from __future__ import annotations

import datetime as dt

import segno
from aiohttp import web
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2
from fapiao.invoicing.v1 import invoice_pb2

from gateway.layout import esc, page
from gateway.money import yuan_display

BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
FIELDS = ("buyer_kind", "name", "tax_id")

# GB 32100-2015 check, the same rule as fapiao_runtime.tax_id, so most typos are caught before a round trip.
CLAIM_SCRIPT = r"""
(function(){
var A="0123456789ABCDEFGHJKLMNPQRTUWXY";
function uscc(c){c=c.trim().toUpperCase();if(c.length!==18)return "must have 18 characters";
if("123456789ANY".indexOf(c[0])<0)return "unknown registration authority code (character 1)";
if("123456789".indexOf(c[1])<0)return "unknown organisation type code (character 2)";
if(!/^[0-9]{6}$/.test(c.slice(2,8)))return "region code (characters 3-8) must be digits";
var s=0,w=1;for(var i=0;i<17;i++){var v=A.indexOf(c[i]);
if(v<0)return "character "+(i+1)+" is not allowed";s+=v*w;w=(w*3)%31;}
if(A.indexOf(c[17])<0||A[(31-s%31)%31]!==c[17])return "check character does not match (GB 32100-2015)";return "";}
var f=document.getElementById("claim-form");if(!f)return;
f.addEventListener("submit",function(ev){
var kind=(f.querySelector("input[name=buyer_kind]:checked")||{}).value;var t=f.elements["tax_id"];
var e=document.getElementById("tax_id-error");var v=t.value.trim();var msg="";
if(kind==="company"&&!v)msg="a company needs its unified social credit code";else if(v)msg=uscc(v);
if(msg){ev.preventDefault();e.textContent="Invalid tax id: "+msg;e.setAttribute("data-reason","INVALID_TAX_ID");
t.setAttribute("aria-invalid","true");t.focus();return;}
var b=document.getElementById("claim-submit");if(b){b.disabled=true;b.textContent="Submitting…";}
});})();
"""


def _date_of(ts: object) -> str:
    seconds = getattr(ts, "seconds", 0)
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, BEIJING).strftime("%Y-%m-%d %H:%M")


def offer_card(offer: minting_pb2.ClaimOffer) -> str:
    rows = "".join(
        f"<tr><td>{esc(item.name)}</td><td class=num>{item.quantity}</td>"
        f"<td class=num>{esc(yuan_display(item.amount_fen))}</td></tr>"
        for item in offer.items
    )
    items = (
        f"<table><thead><tr><th>Item</th><th class=num>Qty</th><th class=num>Amount</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if rows
        else ""
    )
    expires = _date_of(offer.expires_at)
    claim_by = f'<dt>Claim by</dt><dd id="claim-by">{esc(expires)}</dd>' if expires else ""
    return (
        '<div class="card"><h1>Claim your invoice 领取发票</h1>'
        f'<dl><dt>Merchant</dt><dd id="merchant-name">{esc(offer.merchant_name)}</dd>'
        f'<dt>Paid</dt><dd id="paid-at">{esc(_date_of(offer.paid_at))}</dd>'
        f"{claim_by}</dl>"
        f'<p class="amount" id="offer-amount">{esc(yuan_display(offer.amount_fen))}</p>{items}</div>'
    )


def _field_error(errors: dict[str, tuple[str, str]], name: str) -> str:
    reason, text = errors.get(name, ("", ""))
    return f'<div class="error" id="{name}-error" data-reason="{esc(reason)}" role="alert">{esc(text)}</div>'


def _invalid(errors: dict[str, tuple[str, str]], name: str) -> str:
    return ' aria-invalid="true"' if name in errors else ""


def claim_form_page(
    claim_token: str,
    offer: minting_pb2.ClaimOffer,
    idempotency_key: str,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, tuple[str, str]] | None = None,
    status: int = 200,
) -> web.Response:
    """The offer and the buyer form. `errors` maps a field (or "form") to (reason, message)."""
    values = values or {}
    errors = errors or {}
    kind = values.get("buyer_kind", "person")
    form_error = ""
    if "form" in errors:
        reason, text = errors["form"]
        form_error = f'<div class="banner bad" id="form-error" data-reason="{esc(reason)}">{esc(text)}</div>'
    checked = {k: " checked" if kind == k else "" for k in ("person", "company")}
    body = (
        offer_card(offer)
        + form_error
        + f'<form class="card" id="claim-form" method="post" action="/claim/{esc(claim_token)}" novalidate>'
        f'<input type="hidden" name="idempotency_key" value="{esc(idempotency_key)}">'
        "<fieldset><legend><b>Buyer type 抬头类型</b></legend>"
        '<label class="choice"><input type="radio" name="buyer_kind" value="person"'
        f"{checked['person']}> Person 个人</label>"
        '<label class="choice"><input type="radio" name="buyer_kind" value="company"'
        f"{checked['company']}> Company 单位</label>"
        f"{_field_error(errors, 'buyer_kind')}</fieldset>"
        '<label for="name">Name 名称</label>'
        f'<input type="text" id="name" name="name" maxlength="100" autocomplete="organization" '
        f'value="{esc(values.get("name", ""))}"{_invalid(errors, "name")}>'
        f"{_field_error(errors, 'name')}"
        '<label for="tax_id">Tax id 纳税人识别号</label>'
        f'<input type="text" id="tax_id" name="tax_id" maxlength="18" autocapitalize="characters" '
        f'value="{esc(values.get("tax_id", ""))}"{_invalid(errors, "tax_id")}>'
        '<div class="hint">18-character unified social credit code; '
        "required for a company, optional for a person.</div>"
        f"{_field_error(errors, 'tax_id')}"
        '<button type="submit" id="claim-submit">Issue invoice 提交开票</button></form>'
    )
    return page("Claim invoice", body, status=status, script=CLAIM_SCRIPT)


_STATUS_BANNER = {
    invoice_pb2.INVOICE_STATUS_PENDING: ("info", "PENDING", "Recording on the ledger… this page refreshes by itself."),
    invoice_pb2.INVOICE_STATUS_ISSUED: ("ok", "ISSUED", "Issued and recorded on the ledger."),
    invoice_pb2.INVOICE_STATUS_REJECTED: ("bad", "REJECTED", "The ledger rejected this invoice."),
    invoice_pb2.INVOICE_STATUS_CANCELLED: ("warn", "CANCELLED", "Cancelled by a red-letter invoice."),
    invoice_pb2.INVOICE_STATUS_PARTIALLY_RED_LETTERED: (
        "warn",
        "PARTIALLY_RED_LETTERED",
        "Partly reversed by a red-letter invoice.",
    ),
}


def qr_data_uri(content: str) -> str:
    return str(segno.make(content, error="m", micro=False).png_data_uri(scale=4, border=2))


def invoice_page(invoice: invoice_pb2.Invoice, view_token: str, ledger_status: str = "") -> web.Response:
    """The claimer's own invoice: number, parties, lines, totals, ledger status and the PDF link."""
    body = invoice.body
    tone, status, text = _STATUS_BANNER.get(invoice.status, ("info", "UNKNOWN", "Status unknown."))
    if invoice.status == invoice_pb2.INVOICE_STATUS_REJECTED and invoice.rejection_reason:
        text += f" ({invoice.rejection_reason})"
    pending = invoice.status == invoice_pb2.INVOICE_STATUS_PENDING
    ledger = ""
    if invoice.ledger_height:
        ledger = f"<dt>Ledger</dt><dd>chain {invoice.ledger_chain_id}, block {invoice.ledger_height}</dd>"
    if ledger_status:
        ledger += f'<dt>Status</dt><dd id="ledger-status">{esc(ledger_status)}</dd>'
    lines = "".join(
        f"<tr><td>{esc(line.name)}</td><td class=num>{line.quantity}</td><td class=num>{line.tax_rate_bp / 100:g}%</td>"
        f"<td class=num>{esc(yuan_display(line.total_fen))}</td></tr>"
        for line in body.lines
    )
    qr = ""
    if not pending and body.verification_qr:
        qr = (
            '<div class="card"><h2>Verification QR 查验二维码</h2>'
            f'<img class="qr" alt="verification QR code" src="{qr_data_uri(body.verification_qr)}">'
            f'<p class="hint" id="verification-qr">{esc(body.verification_qr)}</p></div>'
        )
    pdf = ""
    if not pending:
        pdf = f'<a class="button" id="pdf-link" href="/invoice/{esc(view_token)}/pdf">Download PDF 下载发票</a>'
    html_body = (
        f'<div class="banner {tone}" id="invoice-status" data-status="{status}">{esc(status)} — {esc(text)}</div>'
        '<div class="card"><h1>Invoice 电子发票</h1><dl>'
        f'<dt>Number</dt><dd id="invoice-number">{esc(body.invoice_number)}</dd>'
        f'<dt>Issue date</dt><dd id="issue-date">{esc(body.issue_date)}</dd>'
        f"<dt>Seller</dt><dd>{esc(body.seller.name)}<br><small>{esc(body.seller.tax_id)}</small></dd>"
        f'<dt>Buyer</dt><dd id="buyer">{esc(body.buyer.name)}<br><small>{esc(body.buyer.tax_id)}</small></dd>'
        f"{ledger}</dl></div>"
        '<div class="card"><table><thead><tr><th>Item</th><th class=num>Qty</th><th class=num>Rate</th>'
        f"<th class=num>Total</th></tr></thead><tbody>{lines}</tbody></table><dl>"
        f"<dt>Amount</dt><dd>{esc(yuan_display(body.total_amount_fen))}</dd>"
        f"<dt>Tax</dt><dd>{esc(yuan_display(body.total_tax_fen))}</dd>"
        "<dt>Total 价税合计</dt>"
        f'<dd class="amount" id="invoice-total">{esc(yuan_display(body.total_fen))}</dd></dl></div>'
        f"{qr}{pdf}"
    )
    return page(f"Invoice {body.invoice_number}", html_body, refresh_s=2 if pending else 0)
