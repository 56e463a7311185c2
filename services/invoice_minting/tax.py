"""Tax on tax-inclusive prices, with one rounding rule so that lines add up to the totals exactly.

Rule (documented in docs/invoice_minting.md): for each line, the tax-inclusive line total T (fen) is
split as tax = round_half_away_from_zero(T * rate_bp / (10000 + rate_bp)) and amount = T - tax.
Invoice totals are the sums of the line fields, so amount + tax = total holds per line and in sum,
and a line negated for a red letter has exactly the negated tax (the rounding is sign-symmetric).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from fapiao.invoicing.v1 import invoice_pb2
from fapiao.payments.v1 import payments_pb2
from fapiao_runtime.errors import InvalidArgument
from fapiao_runtime.tax_rates import NATIONAL_VAT_RATES_BP

# VAT rates in basis points that a 数电票 line may carry, shared with payment_intake's validation.
ALLOWED_TAX_RATES_BP = NATIONAL_VAT_RATES_BP
MAX_LINES = 200
# Bound on any single amount (1e12 fen = 10 billion yuan): keeps products far inside int64.
MAX_AMOUNT_FEN = 10**12


def round_half_away_from_zero(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, halves away from zero (exact integer math)."""
    assert denominator > 0
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def tax_of(total_fen: int, tax_rate_bp: int) -> int:
    """Tax included in the tax-inclusive `total_fen` at `tax_rate_bp`."""
    return round_half_away_from_zero(total_fen * tax_rate_bp, 10_000 + tax_rate_bp)


def make_line(
    code: str, name: str, quantity: int, unit_price_fen: int, total_fen: int, rate_bp: int
) -> invoice_pb2.InvoiceLine:
    """One invoice line from its tax-inclusive total."""
    tax = tax_of(total_fen, rate_bp)
    return invoice_pb2.InvoiceLine(
        tax_classification_code=code,
        name=name,
        quantity=quantity,
        unit_price_fen=unit_price_fen,
        amount_fen=total_fen - tax,
        tax_rate_bp=rate_bp,
        tax_fen=tax,
        total_fen=total_fen,
    )


@dataclass(frozen=True)
class Totals:
    amount_fen: int
    tax_fen: int
    total_fen: int


def totals_of(lines: Sequence[invoice_pb2.InvoiceLine]) -> Totals:
    """Sums of the line fields; asserts the per-line invariant amount + tax = total."""
    for line in lines:
        assert line.amount_fen + line.tax_fen == line.total_fen
    return Totals(
        amount_fen=sum(line.amount_fen for line in lines),
        tax_fen=sum(line.tax_fen for line in lines),
        total_fen=sum(line.total_fen for line in lines),
    )


def check_payment_items(amount_fen: int, items: Sequence[payments_pb2.PaymentItem]) -> None:
    """Validate a payment's tax-inclusive items against its amount.

    Raises InvalidArgument: INVALID_AMOUNT (amount not in 1..MAX_AMOUNT_FEN), TOO_MANY_LINES,
    AMOUNT_MISMATCH (an item's amount != quantity * unit price, or the items do not sum to the amount),
    INVALID_TAX_RATE (a rate outside ALLOWED_TAX_RATES_BP). An empty item list is valid (the merchant's
    default classification is used at claim time).
    """
    if not 0 < amount_fen <= MAX_AMOUNT_FEN:
        raise InvalidArgument("INVALID_AMOUNT", f"payment amount must be 1..{MAX_AMOUNT_FEN} fen")
    if len(items) > MAX_LINES:
        raise InvalidArgument("TOO_MANY_LINES", f"at most {MAX_LINES} items")
    if not items:
        return
    for index, item in enumerate(items):
        if item.quantity <= 0 or item.unit_price_fen < 0 or not 0 <= item.amount_fen <= MAX_AMOUNT_FEN:
            raise InvalidArgument("AMOUNT_MISMATCH", f"item {index}: quantity and prices must be positive")
        if item.quantity * item.unit_price_fen != item.amount_fen:
            raise InvalidArgument("AMOUNT_MISMATCH", f"item {index}: quantity * unit price != amount")
        if item.tax_rate_bp not in ALLOWED_TAX_RATES_BP:
            raise InvalidArgument("INVALID_TAX_RATE", f"item {index}: tax rate {item.tax_rate_bp} bp is not allowed")
    if sum(item.amount_fen for item in items) != amount_fen:
        raise InvalidArgument("AMOUNT_MISMATCH", "items do not add up to the payment amount")


def lines_for_payment(
    amount_fen: int,
    items: Sequence[payments_pb2.PaymentItem],
    default_code: str,
    default_name: str,
    default_rate_bp: int,
) -> list[invoice_pb2.InvoiceLine]:
    """Invoice lines for a validated payment: one per item, or one from the merchant's default classification."""
    if not items:
        return [make_line(default_code, default_name, 1, amount_fen, amount_fen, default_rate_bp)]
    return [
        make_line(i.tax_classification_code, i.name, i.quantity, i.unit_price_fen, i.amount_fen, i.tax_rate_bp)
        for i in items
    ]


def _line_key(line: invoice_pb2.InvoiceLine) -> tuple[str, str, int]:
    return line.tax_classification_code, line.name, line.tax_rate_bp


def red_letter_lines(
    original: Sequence[invoice_pb2.InvoiceLine],
    refund_fen: int,
    earlier: Sequence[Sequence[invoice_pb2.InvoiceLine]] = (),
) -> list[invoice_pb2.InvoiceLine]:
    """Negative lines reversing `refund_fen` (tax-inclusive) of an invoice with lines `original`, of which
    the red letters `earlier` (their lines) already reversed parts.

    Reversing everything at once negates every line (quantity too). Otherwise the refund is spread over
    what is left of each line (its total minus what earlier red letters reversed of it) in proportion,
    by the largest-remainder method (the parts sum exactly to the refund; ties go to the earlier line),
    each part as quantity -1 at unit price = the part. A part never exceeds what is left of its line, so
    the red letters of an invoice never reverse more of a line, or of a tax rate, than it held; the
    last one reverses exactly what is left.
    """
    # A red letter's line reverses the original lines of the same classification, name and rate: what
    # earlier red letters reversed per such key is taken from those lines in order.
    reversed_of: Counter[tuple[str, str, int]] = Counter()
    for red in earlier:
        for line in red:
            reversed_of[_line_key(line)] -= line.total_fen
    left_of = []
    for line in original:
        taken = min(line.total_fen, reversed_of[_line_key(line)])
        reversed_of[_line_key(line)] -= taken
        left_of.append(line.total_fen - taken)
    remaining = sum(left_of)
    assert 0 < refund_fen <= remaining
    if not earlier and refund_fen == remaining:
        return [
            make_line(
                line.tax_classification_code,
                line.name,
                -line.quantity,
                line.unit_price_fen,
                -line.total_fen,
                line.tax_rate_bp,
            )
            for line in original
        ]
    shares = []
    for index, left in enumerate(left_of):
        whole, remainder = divmod(refund_fen * left, remaining)
        shares.append([whole, remainder, index])
    short = refund_fen - sum(s[0] for s in shares)
    for share in sorted(shares, key=lambda s: (-s[1], s[2]))[:short]:
        share[0] += 1  # only shares with a remainder, so never past what is left of the line
    return [
        make_line(line.tax_classification_code, line.name, -1, part, -part, line.tax_rate_bp)
        for line, (part, _, _) in zip(original, shares, strict=True)
        if part > 0
    ]
