"""HTML of the claim form and of the issued-invoice page (templates claim.html and invoice.html)."""

from __future__ import annotations

import segno
from aiohttp import web
from fapiao.invoicing.v1 import invoice_minting_service_pb2 as minting_pb2

from gateway.flows import ClaimedInvoice, FieldProblem
from gateway.i18n import Language
from gateway.layout import render
from gateway.messages import INVOICE_STATUSES, LEDGER_STATUSES, SCRIPT_MESSAGES, STATUS_NAMES, field_note

# Every field is checked at once before a round trip: a name, and for a tax id the GB 32100-2015 rule
# (the same as fapiao_runtime.tax_id); the server checks again and says the same next to each field.
CLAIM_SCRIPT = r"""
(function(){
var A="0123456789ABCDEFGHJKLMNPQRTUWXY";
function uscc(c){c=c.trim().toUpperCase();if(c.length!==18)return MESSAGES.length;
if("123456789ANY".indexOf(c[0])<0)return MESSAGES.authority;
if("123456789".indexOf(c[1])<0)return MESSAGES.type;
if(!/^[0-9]{6}$/.test(c.slice(2,8)))return MESSAGES.region;
var s=0,w=1;for(var i=0;i<17;i++){var v=A.indexOf(c[i]);
if(v<0)return MESSAGES["char"];s+=v*w;w=(w*3)%31;}
if(A.indexOf(c[17])<0||A[(31-s%31)%31]!==c[17])return MESSAGES.check;return "";}
var f=document.getElementById("claim-form");if(!f)return;
function show(name,reason,text){var e=document.getElementById(name+"-error");var i=f.elements[name];
e.textContent=text;e.setAttribute("data-reason",reason);
if(text){e.setAttribute("role","alert");i.setAttribute("aria-invalid","true");}
else{e.removeAttribute("role");i.removeAttribute("aria-invalid");}}
f.addEventListener("submit",function(ev){
var kind=(f.querySelector("input[name=buyer_kind]:checked")||{}).value;
var n=f.elements["name"].value.trim();var t=f.elements["tax_id"].value.trim();var first=null;
if(!n){show("name","NAME_REQUIRED",MESSAGES.name_required);first=first||"name";}
else if(n.length>100){show("name","NAME_TOO_LONG",MESSAGES.name_too_long);first=first||"name";}
else show("name","","");
var msg="";if(kind==="company"&&!t)msg=MESSAGES.company;else if(t)msg=uscc(t);
if(msg){show("tax_id","INVALID_TAX_ID",MESSAGES.invalid_tax_id+MESSAGES.sep+msg);first=first||"tax_id";}
else show("tax_id","","");
if(first){ev.preventDefault();f.elements[first].focus();return;}
var b=document.getElementById("claim-submit");if(b){b.disabled=true;b.textContent=MESSAGES.submitting;}
});})();
"""


def notes(problems: dict[str, FieldProblem], lang: Language) -> dict[str, dict[str, str]]:
    """Each field's problem as the template shows it: its reason and its note in `lang`."""
    return {
        name: {"reason": problem.reason, "note": field_note(problem.reason, problem.detail, lang)}
        for name, problem in problems.items()
    }


def claim_form_page(
    lang: Language,
    claim_token: str,
    offer: minting_pb2.ClaimOffer,
    idempotency_key: str,
    *,
    values: dict[str, str] | None = None,
    problems: dict[str, FieldProblem] | None = None,
    status: int = 200,
) -> web.Response:
    """The offer and the buyer form, with every field's problem next to it."""
    values = values or {}
    script_messages = {key: lang.gettext(text) for key, text in SCRIPT_MESSAGES.items()}
    script_messages["sep"] = ": " if lang.code == "en" else "："
    return render(
        lang,
        "claim.html",
        title=lang.gettext("Claim your invoice"),
        status=status,
        script=CLAIM_SCRIPT,
        script_messages=script_messages,
        offer=offer,
        claim_token=claim_token,
        idempotency_key=idempotency_key,
        values=values,
        kind=values.get("buyer_kind", "person"),
        errors=notes(problems or {}, lang),
    )


def qr_data_uri(content: str) -> str:
    return str(segno.make(content, error="m", micro=False).png_data_uri(scale=4, border=2))


def invoice_page(lang: Language, claimed: ClaimedInvoice, view_token: str) -> web.Response:
    """The claimer's own invoice: number, parties, lines, totals, ledger status and the PDF link."""
    invoice = claimed.invoice
    tone, text = INVOICE_STATUSES.get(claimed.status, INVOICE_STATUSES["UNKNOWN"])
    pending = claimed.status == "PENDING"
    qr_uri = qr_data_uri(invoice.body.verification_qr) if not pending and invoice.body.verification_qr else ""
    return render(
        lang,
        "invoice.html",
        title=lang.gettext("Invoice %(number)s") % {"number": invoice.body.invoice_number},
        refresh_s=2 if pending else 0,
        invoice=invoice,
        tone=tone,
        invoice_status=claimed.status,
        status_name=lang.gettext(STATUS_NAMES.get(claimed.status, STATUS_NAMES["UNKNOWN"])),
        status_text=lang.gettext(text),
        rejection=invoice.rejection_reason if claimed.status == "REJECTED" else "",
        reimbursement=claimed.reimbursement,
        reimbursement_text=lang.gettext(LEDGER_STATUSES.get(claimed.reimbursement, ""))
        if claimed.reimbursement
        else "",
        qr_uri=qr_uri,
        pdf_url="" if pending else f"/invoice/{view_token}/pdf",
    )
