"""CPU per call of the envelope and the protocol engine, without any I/O.

    python benchmarks/cpu_envelope.py [--calls N] [--rounds R] [--profile CASE]

Times ``smtplug.envelope.prepare`` (and ``smtplug.api.prepare``, which adds
the line check of a message held in memory and the MAIL/RCPT parameters) on
the messages users send: an ``email.message.EmailMessage``, ``bytes`` and
``str``; 1 and 100 recipients; the recipients given with ``recipients=`` or
read from To and Bcc (which is then stripped). Each case is measured twice:

* ``distinct``: every call gets a message of its own (its own Subject and
  Message-ID), so no memo keyed on the message helps: a sender of
  individual messages;
* ``same``: the same message again and again (a bulk sender, and the
  project's throughput benchmarks, which send one message many times).

Then the per-connection and per-message protocol work: the MAIL/RCPT
command encoders for the prepared envelope, the DATA encoder over the body,
and the reply parser on a greeting, an EHLO reply and the replies to one
pipelined flight. Figures are microseconds per call, the minimum over
``--rounds`` rounds of ``--calls`` calls each (the minimum is the least
disturbed by other work on the machine); ``--profile CASE`` runs one case
under cProfile instead and prints the top entries.
"""

from __future__ import annotations

import argparse
import cProfile
import email.message
import itertools
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtplug import api, envelope
from smtplug.options import MessageOptions
from smtplug.protocol import DataEncoder, ReplyParser, commands

FROM = "Sender Name <sender@example.com>"
HUNDRED = [f"r{i}@example.org" for i in range(100)]
BODY = "".join(
    f"Line {i:02d} of a small benchmark message; nothing in it needs escaping.\n" for i in range(12)
)
_SERIAL = itertools.count()
FOLD = ",\r\n "
DATE = "Sat, 28 Nov 2026 12:00:00 +0000"


def _email(index: int, to: list[str], bcc: list[str]) -> email.message.EmailMessage:
    msg = email.message.EmailMessage()
    msg["From"] = FROM
    msg["To"] = ", ".join(to)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    msg["Subject"] = f"smtplug benchmark {index}"
    msg["Date"] = DATE
    msg["Message-ID"] = f"<benchmark.{index}@example.com>"
    msg.set_content(BODY)
    return msg


def _text(index: int, to: list[str], bcc: list[str]) -> str:
    # Address lists folded, one address a line, as a mail program writes them.
    head = [f"From: {FROM}", "To: " + FOLD.join(to)]
    if bcc:
        head.append("Bcc: " + FOLD.join(bcc))
    head += [
        f"Subject: smtplug benchmark {index}",
        f"Date: {DATE}",
        f"Message-ID: <benchmark.{index}@example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    return "\r\n".join(head) + "\r\n\r\n" + BODY.replace("\n", "\r\n")


MAKERS: dict[str, Callable[[int, list[str], list[str]], object]] = {
    "email": _email,
    "bytes": lambda i, to, bcc: _text(i, to, bcc).encode(),
    "str": _text,
}


@dataclass(frozen=True)
class Case:
    kind: str  # email, bytes, str
    count: int  # recipients
    bcc: bool  # recipients from To + Bcc (Bcc stripped) instead of recipients=

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.count}{'-bcc' if self.bcc else ''}"

    def calls(self, calls: int) -> int:
        """Calls per round: a twentieth for 100 recipients (each costs more)."""
        return max(1, calls // 20) if self.count > 1 else calls

    def inputs(self, calls: int, distinct: bool) -> list[Input]:
        """(message, recipients=) for each call of a round."""
        calls = self.calls(calls)
        make = MAKERS[self.kind]
        if not distinct:
            to, bcc, recipients = self.addresses(HUNDRED[: self.count])
            return [(make(0, to, bcc), recipients)] * calls
        # Each message with recipients of its own ("r7.123@example.org", never
        # the same in another round or case): no memo of address lists helps.
        out: list[Input] = []
        for _ in range(calls):
            i = next(_SERIAL)
            to, bcc, recipients = self.addresses(
                [f"r{n}.{i}@example.org" for n in range(self.count)]
            )
            out.append((make(i, to, bcc), recipients))
        return out

    def addresses(self, rcpt: list[str]) -> tuple[list[str], list[str], list[str] | None]:
        """(To, Bcc, recipients=): with ``bcc``, To holds the first and Bcc the
        others (the first again for one recipient), and recipients= is None."""
        if self.bcc:
            return rcpt[:1], (rcpt[1:] or rcpt[:1]), None
        return rcpt, [], rcpt


Input = tuple[object, "list[str] | None"]
CASES = [Case(k, n, b) for k in MAKERS for n in (1, 100) for b in (False, True)]


def envelope_prepare(item: Input) -> object:
    message, recipients = item
    return envelope.prepare(
        message,  # type: ignore[arg-type]
        originator=None,
        recipients=recipients,
        header=(),
        login=lambda: "user",
        hostname="client.example.org",
    )


def api_prepare(item: Input) -> object:
    message, recipients = item
    return api.prepare(message, MessageOptions(recipients=recipients))  # type: ignore[arg-type]


def _time(call: Callable[[Input], object], inputs: list[Input]) -> float:
    start = time.perf_counter()
    for item in inputs:
        call(item)
    return (time.perf_counter() - start) / len(inputs) * 1e6


def _best(
    call: Callable[[Input], object], case: Case, calls: int, distinct: bool, rounds: int
) -> float:
    best = float("inf")
    for _ in range(rounds):
        inputs = case.inputs(calls, distinct)  # new inputs each round: "distinct" stays so
        best = min(best, _time(call, inputs))
    return best


# --- the protocol engine -----------------------------------------------------------------

GREETING = b"220 sink.example.org ESMTP\r\n"
EHLO = (
    b"250-sink.example.org\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
)


def _flight(count: int) -> bytes:
    return (
        b"250 2.1.0 Ok\r\n"
        + b"250 2.1.5 Ok\r\n" * count
        + b"354 End data with <CR><LF>.<CR><LF>\r\n"
    )


def _engine_cases(calls: int) -> dict[str, Callable[[], object]]:
    prepared = {
        n: envelope.prepare(
            _text(0, HUNDRED[:n], []).encode(),
            originator=None,
            recipients=HUNDRED[:n],
            header=(),
            login=lambda: "user",
            hostname="client.example.org",
        )
        for n in (1, 100)
    }
    body = bytes(b"".join(bytes(c) for c in prepared[1].body.chunks()))

    def encode(n: int) -> Callable[[], object]:
        p = prepared[n]

        def run() -> object:
            out = [commands.mail(p.sender)]
            out += [commands.rcpt(r) for r in p.recipients]
            return out

        return run

    def data() -> object:
        encoder = DataEncoder()
        return encoder.encode(body) + encoder.finish()

    def replies(n: int) -> Callable[[], object]:
        flight = _flight(n)

        def run() -> object:
            parser = ReplyParser()
            for chunk in (GREETING, EHLO, flight):
                parser.feed(chunk)
                while parser.next_reply() is not None:
                    pass
            return parser

        return run

    return {
        "MAIL+RCPT encoders, 1 rcpt": encode(1),
        "MAIL+RCPT encoders, 100 rcpts": encode(100),
        "DATA encoder, 1 KB body": data,
        "replies (greeting, EHLO, flight), 1 rcpt": replies(1),
        "replies (greeting, EHLO, flight), 100 rcpts": replies(100),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--profile",
        metavar="CASE",
        help="profile one case (e.g. email-1, bytes-100-bcc) with distinct messages",
    )
    args = parser.parse_args(argv)

    if args.profile:
        case = next(c for c in CASES if c.name == args.profile)
        inputs = case.inputs(args.calls, distinct=True)
        envelope_prepare(inputs[0])
        profiler = cProfile.Profile()
        profiler.enable()
        for item in inputs:
            envelope_prepare(item)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        return 0

    print(
        f"us per call, min of {args.rounds} rounds of {args.calls} calls (100 rcpts: a twentieth)"
    )
    print(f"{'case':<16} {'prepare distinct':>17} {'prepare same':>13} {'api distinct':>13}")
    for case in CASES:
        row = []
        for call, distinct in (
            (envelope_prepare, True),
            (envelope_prepare, False),
            (api_prepare, True),
        ):
            call(case.inputs(1, distinct)[0])  # warm up: imports, compiled patterns
            row.append(_best(call, case, args.calls, distinct, args.rounds))
        print(f"{case.name:<16} {row[0]:>17.1f} {row[1]:>13.1f} {row[2]:>13.1f}")

    print()
    for name, run in _engine_cases(args.calls).items():
        run()
        best = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.calls):
                run()
            best = min(best, (time.perf_counter() - start) / args.calls * 1e6)
        print(f"{name:<44} {best:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
