"""fapiao pay: act as the payment platform — post signed, encrypted notifications to the webhook.

One payment prints its claim URL and QR code; --count N generates load at --rate per second with a
progress bar; `fapiao pay refund` posts a refund notification.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
from fapiao_stack.paths import RUN_DIR

from fapiao_cli import clients
from fapiao_cli.local import gateway_url, load_stack_environment
from fapiao_cli.main import EXIT_FAILED, EXIT_OK, CliError, command_epilog
from fapiao_cli.platform import NotificationOutcome, PaymentPlatform
from fapiao_cli.progress import ProgressBar

MAX_COUNT = 1_000_000


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pay = subparsers.add_parser(
        "pay",
        help="act as the payment platform: post payment / refund notifications",
        description="Acts as the payment platform for a merchant registered with `fapiao merchant add` "
        "(which keeps the platform's keys for it under .run/platform).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=command_epilog(
            "fapiao pay --merchant-id 1900000001 --amount-fen 11200",
            "fapiao pay --merchant-id 1900000001 --amount-fen 500 --count 1000 --rate 200",
            "fapiao pay --merchant-id 1900000001 refund --transaction-id 4200... --out-trade-no order-..."
            " --refund-fen 11200 --total-fen 11200",
        ),
    )
    pay.add_argument("--merchant-id", required=True)
    pay.add_argument("--amount-fen", type=int, default=0, help="amount paid, in fen")
    pay.add_argument("--count", type=int, default=1, help="number of payments (load generation)")
    pay.add_argument("--rate", type=float, default=100.0, help="payments per second with --count")
    pay.add_argument("--webhook-url", default="", help="base URL of the webhook (default: the gateway)")
    pay.add_argument("--qr-png", default="", help="where to save the claim QR code (single payment)")
    pay.set_defaults(handler=_pay)
    commands = pay.add_subparsers(dest="pay_command")
    refund = commands.add_parser("refund", help="refund (part of) a payment")
    refund.add_argument("--transaction-id", required=True)
    refund.add_argument("--out-trade-no", required=True)
    refund.add_argument("--refund-fen", type=int, required=True)
    refund.add_argument("--total-fen", type=int, required=True)
    refund.set_defaults(handler=_refund)


def _platform(args: argparse.Namespace) -> PaymentPlatform:
    load_stack_environment()
    try:
        return PaymentPlatform.for_merchant(args.merchant_id, args.webhook_url or gateway_url())
    except LookupError as exc:
        raise CliError(str(exc.args[0] if exc.args else exc)) from None


def _answer(outcome: NotificationOutcome) -> str:
    """The webhook's answer as the platform received it: JSON."""
    return json.dumps(outcome.answer, ensure_ascii=False)


def _pay(args: argparse.Namespace) -> int:
    if args.amount_fen <= 0:
        raise CliError("--amount-fen must be a positive number of fen")
    if not 1 <= args.count <= MAX_COUNT:
        raise CliError(f"--count must be within 1..{MAX_COUNT}")
    platform = _platform(args)
    if args.count > 1:
        return asyncio.run(_load(platform, args.amount_fen, args.count, args.rate))
    return asyncio.run(_single(platform, args))


async def _single(platform: PaymentPlatform, args: argparse.Namespace) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        outcome = await platform.pay(session, args.amount_fen)
    print(f"notification for transaction {outcome.transaction_id}: HTTP {outcome.status} {_answer(outcome)}")
    if not outcome.accepted:
        raise CliError(f"the webhook refused the notification: HTTP {outcome.status} {_answer(outcome)}", EXIT_FAILED)
    payment = (await clients.payment_of(args.merchant_id, outcome.transaction_id)).payment
    offer = await clients.wait_for_claim_offer(args.merchant_id, payment.payment_id)
    png = Path(args.qr_png or RUN_DIR / "claims" / f"{payment.payment_id}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(offer.claim_qr_png)
    print_claim(payment.payment_id, payment.out_trade_no, offer.claim_url, png)
    return EXIT_OK


def print_claim(payment_id: str, out_trade_no: str, claim_url: str, png: Path) -> None:
    import segno

    print(f"payment {payment_id} (order {out_trade_no})")
    print(f"claim page: {claim_url}")
    segno.make(claim_url, error="m").terminal(compact=True)
    print(f"QR code saved to {png}")


async def _load(platform: PaymentPlatform, amount_fen: int, count: int, rate: float) -> int:
    interval = 1.0 / max(rate, 0.1)
    failures = 0
    in_flight: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10), connector=connector) as session:
        with ProgressBar(count, "payments") as bar:

            async def one() -> None:
                nonlocal failures
                outcome = await platform.pay(session, amount_fen)
                failures += 0 if outcome.accepted else 1
                bar.advance()

            started = time.monotonic()
            for i in range(count):
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                if len(in_flight) >= 500:  # bound concurrency
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            if in_flight:
                await asyncio.wait(in_flight)
    print(f"{count - failures} accepted, {failures} rejected")
    return EXIT_OK if failures == 0 else EXIT_FAILED


def _refund(args: argparse.Namespace) -> int:
    platform = _platform(args)

    async def go() -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            outcome = await platform.refund(
                session,
                transaction_id=args.transaction_id,
                out_trade_no=args.out_trade_no,
                refund_fen=args.refund_fen,
                total_fen=args.total_fen,
            )
        print(f"refund notification: HTTP {outcome.status} {_answer(outcome)}")
        if not outcome.accepted:
            raise CliError(f"the webhook refused the refund: HTTP {outcome.status} {_answer(outcome)}", EXIT_FAILED)
        return EXIT_OK

    return asyncio.run(go())
