"""A fuzz target for smtplug's reply parser, with a small built-in fuzzer.

Run it for a bounded time (the file is not a pytest module; pytest runs
``test_fuzz_replies.py`` next to it instead)::

    python tests/fuzz/fuzz_replies.py --seconds 60 [--seed N]
    python tests/fuzz/fuzz_replies.py --replay "b'...'"   # one input, as printed

Theory of operation
-------------------
One fuzz *input* is a byte string: its first four octets choose the
:class:`ReplyLimits` (line length, lines, reply size) and the places where
the rest is cut into ``feed`` calls; the rest is the bytes a server sent.
:func:`check` runs that input and raises :class:`FuzzFailure` unless:

* nothing but :class:`ProtocolError` escapes ``feed``/``next_reply``;
* a parser that raised stays broken (every later call raises again);
* no reply exceeds the limits and the parser never buffers a line as long
  as ``max_line_length``;
* the replies equal what :func:`reference_parse`, a plain whole-input
  re-implementation of RFC 5321 section 4.2 with the same limits, gives: all
  of them when the input is valid, a prefix of them when it is not, and the
  parser fails exactly when the reference does;
* feeding the bytes whole, in the chosen pieces, and in other pieces gives
  the same replies.

:func:`check` has the shape of an atheris/libFuzzer ``TestOneInput``. The
engine here is a deterministic mutational fuzzer without coverage feedback:
seeded with :data:`SEED_CORPUS`, it mutates inputs (byte flips, inserted line
ends, digits and separators, spliced lines, repeated runs, fresh limits) and
also generates replies from a small grammar. It needs nothing but the
standard library, so CI and the test suite can run it on every Python the
project supports; ``--seed`` makes a run repeatable.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from smtplug.errors import ProtocolError
from smtplug.protocol.replies import Reply, ReplyLimits, ReplyParser

__all__ = [
    "SEED_CORPUS",
    "FuzzFailure",
    "FuzzResult",
    "Outcome",
    "ParserFactory",
    "check",
    "decode_input",
    "fuzz",
    "main",
    "reference_parse",
]

ParserFactory = Callable[[ReplyLimits], ReplyParser]

#: Interesting server output: valid, odd and hostile.
SEED_CORPUS: tuple[bytes, ...] = (
    b"220 mail.example.org ESMTP ready\r\n",
    b"250-mx.example.org Hello [192.0.2.1]\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
    b"250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n",
    b"250 2.1.0 Sender ok\r\n",
    b"550-5.1.1 <nobody@example.org>: Recipient address rejected\r\n550 5.1.1 really\r\n",
    b"250 5.1.1 class does not match the code\r\n",
    b"250 2.1000.0 detail too long\r\n250 2.1.0\r\n250 2.1.0\tx\r\n",
    b"421 4.3.2 Service shutting down\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"334 \r\n334 dXNlcm5hbWU6\r\n235 2.7.0 ok\r\n",
    b"250 bare LF\n250-mixed\r\n250 endings\n",
    b"250-cr only\r250 line ends\r",
    b"250 cr cr lf\r\r\n",
    b"250\r\n250-\r\n250\r\n",
    b"250 a\r\n\r\n250 b\r\n",
    b"250 nul\x00byte\r\n",
    b"250 esc \x1b[31mred\x1b[0m \x9b csi \xc2\x9b c1 \x7f del\tTAB\r\n",
    b"250 caf\xc3\xa9 \xe2\x80\xae rtl \xc3\x28 bad \xff\xfe\r\n",
    b"250 " + b"x" * 3000 + b"\r\n",
    b"250-" + b"y" * 2043 + b"\r\n250 z\r\n",
    b"250-x\r\n" * 300 + b"250 end\r\n",
    b"+25 ok\r\n",
    "\u0662\u0665\u0660 ok\r\n".encode(),
    b"250-first\r\n251 mismatched code\r\n",
    b" 250 leading space\r\n",
    b"250x no separator\r\n",
    b"25\r\n",
    b"600 out of range\r\n199 too\r\n",
    b"\xef\xbb\xbf250 BOM\r\n",
)

# Limits an input can choose; tight ones to hit them often, roomy ones (the
# defaults among them) so that most replies get through.
_LINE_LENGTHS = (5, 6, 8, 12, 24, 40, 64, 100, 512, 1024, 2048, 2048, 4096, 4096)
_LINE_COUNTS = (1, 2, 3, 5, 8, 16, 64, 256, 256, 256)
_REPLY_SIZES = (5, 12, 40, 120, 300, 1000, 4096, 65536, 65536, 65536)
_MAX_INPUT = 8192
_SHOW = 1200  # octets of a failing input shown; the rest is elided


class FuzzFailure(AssertionError):
    """The parser broke one of the properties :func:`check` asserts."""


@dataclass(frozen=True)
class Outcome:
    """What a parser (or the reference) made of the bytes."""

    replies: tuple[Reply, ...]
    failed: bool
    pending: bool = False


def decode_input(data: bytes) -> tuple[ReplyLimits, list[bytes], bytes]:
    """The limits, the pieces to feed, and the whole payload an input encodes."""
    head = data[:4].ljust(4, b"\0")
    limits = ReplyLimits(
        max_line_length=_LINE_LENGTHS[head[0] % len(_LINE_LENGTHS)],
        max_lines=_LINE_COUNTS[head[1] % len(_LINE_COUNTS)],
        max_reply_size=_REPLY_SIZES[head[2] % len(_REPLY_SIZES)],
    )
    payload = data[4:]
    return limits, _cut(payload, random.Random(head[3])), payload


def _cut(payload: bytes, rng: random.Random) -> list[bytes]:
    """``payload`` in pieces: sometimes bytewise, else at random places."""
    if not payload:
        return [b""]
    if rng.random() < 0.1 and len(payload) <= 512:
        return [payload[i : i + 1] for i in range(len(payload))]
    count = rng.randrange(0, min(len(payload), 12) + 1)
    points = sorted({rng.randrange(0, len(payload) + 1) for _ in range(count)})
    edges = [0, *points, len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(edges)]


# --- the reference: whole input, one line at a time ----------------------------------


def _escape(text: str) -> str:
    out = []
    for char in text:
        point = ord(char)
        if (point < 0x20 and char != "\t") or 0x7F <= point <= 0x9F:
            out.append(f"\\x{point:02x}")
        else:
            out.append(char)
    return "".join(out)


def _enhanced(code: int, text: str) -> str | None:
    """RFC 3463 ``class.subject.detail`` at the start of the text, class = code's
    (and a class is 2, 4 or 5: there is no other)."""
    head = text
    for stop in (" ", "\t"):
        head = head.split(stop, 1)[0]
    parts = head.split(".")
    if len(parts) != 3 or parts[0] != str(code // 100) or parts[0] not in ("2", "4", "5"):
        return None
    if not all(1 <= len(p) <= 3 and all(c in "0123456789" for c in p) for p in parts[1:]):
        return None
    return head


def reference_parse(payload: bytes, limits: ReplyLimits) -> Outcome:
    """The replies in ``payload`` and whether it breaks the protocol or a limit."""
    *complete, rest = payload.split(b"\n")
    replies: list[Reply] = []
    code: int | None = None
    lines: list[str] = []
    size = 0
    for line in complete:
        if len(line) + 1 > limits.max_line_length:
            return Outcome(tuple(replies), True)
        raw = line[:-1] if line.endswith(b"\r") else line
        head = raw[:4]
        if not (
            len(raw) >= 3
            and chr(raw[0]) in "2345"
            and chr(raw[1]) in "0123456789"
            and chr(raw[2]) in "0123456789"
            and head[3:] in (b"", b" ", b"-")
        ):
            return Outcome(tuple(replies), True)
        this = int(raw[:3].decode("ascii"))
        if code is not None and this != code:
            return Outcome(tuple(replies), True)
        if len(lines) == limits.max_lines or size + len(line) + 1 > limits.max_reply_size:
            return Outcome(tuple(replies), True)
        code = this
        lines.append(_escape(raw[4:].decode("utf-8", "backslashreplace")))
        size += len(line) + 1
        if head[3:] != b"-":
            replies.append(Reply(code, tuple(lines), _enhanced(code, lines[0])))
            code, lines, size = None, [], 0
    if len(rest) + 1 > limits.max_line_length:
        return Outcome(tuple(replies), True)
    return Outcome(tuple(replies), False, pending=bool(rest or lines))


# --- the target ----------------------------------------------------------------------


def _run(factory: ParserFactory, limits: ReplyLimits, pieces: Iterable[bytes]) -> Outcome:
    """Feed ``pieces`` to a fresh parser; check the invariants that hold at every step."""
    parser = factory(limits)
    got: list[Reply] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            buffered = len(getattr(parser, "_buffer", b""))
            if buffered >= limits.max_line_length:
                raise FuzzFailure(
                    f"{buffered} octets buffered with max_line_length={limits.max_line_length}"
                )
            while (reply := parser.next_reply()) is not None:
                if not 1 <= len(reply.lines) <= limits.max_lines:
                    raise FuzzFailure(f"{len(reply.lines)} lines, limit {limits.max_lines}")
                if not 200 <= reply.code <= 599:
                    raise FuzzFailure(f"reply code {reply.code}")
                got.append(reply)
    except ProtocolError:
        _assert_stays_broken(parser)
        return Outcome(tuple(got), True)
    except FuzzFailure:
        raise
    except Exception as exc:
        raise FuzzFailure(f"{type(exc).__name__} escaped the parser: {exc!r}") from exc
    return Outcome(tuple(got), False, pending=parser.has_pending())


def _assert_stays_broken(parser: ReplyParser) -> None:
    if not parser.broken:
        raise FuzzFailure("ProtocolError raised but parser.broken is False")
    for attempt in (
        lambda: parser.feed(b"250 ok\r\n"),
        lambda: parser.feed(b""),
        parser.next_reply,
    ):
        try:
            attempt()
        except ProtocolError:
            continue
        except Exception as exc:
            raise FuzzFailure(f"broken parser raised {exc!r}, not ProtocolError") from exc
        raise FuzzFailure("a broken parser accepted another call")


def _compare(name: str, outcome: Outcome, expected: Outcome) -> None:
    if outcome.failed != expected.failed:
        word = "refused" if outcome.failed else "accepted"
        raise FuzzFailure(f"{name}: parser {word} what the reference did not")
    if expected.failed:
        if outcome.replies != expected.replies[: len(outcome.replies)]:
            raise FuzzFailure(
                f"{name}: replies before the error differ from the reference: "
                f"{outcome.replies!r} != {expected.replies!r}"
            )
    elif outcome != expected:
        raise FuzzFailure(f"{name}: {outcome!r} != reference {expected!r}")


def check(data: bytes, factory: ParserFactory = ReplyParser) -> None:
    """Run one fuzz input; raise :class:`FuzzFailure` if a property fails."""
    limits, pieces, payload = decode_input(data)
    expected = reference_parse(payload, limits)
    whole = _run(factory, limits, [payload])
    _compare("fed whole", whole, expected)
    _compare("fed in pieces", _run(factory, limits, pieces), expected)
    other = _cut(payload, random.Random(len(payload) * 256 + data[3:4].ljust(1, b"\0")[0] + 1))
    _compare("fed in other pieces", _run(factory, limits, other), expected)


# --- the engine ----------------------------------------------------------------------

_TOKENS = (
    b"\r\n",
    b"\n",
    b"\r",
    b"-",
    b" ",
    b"\t",
    b"250",
    b"250-",
    b"250 ",
    b"5",
    b"0",
    b"2.1.0 ",
    b"5.7.1",
    b"\x00",
    b"\xff",
    b"\xc2\x9b",
    b"\x1b",
    b"+",
    "\u0662".encode(),
)


def _generate(rng: random.Random) -> bytes:
    """Replies from a grammar: mostly well-formed, with odd text and line ends."""
    out = bytearray()
    for _ in range(rng.randrange(1, 5)):
        code = rng.choice((b"220", b"250", b"334", b"354", b"421", b"550", b"599", b"200"))
        count = rng.choice((1, 1, 2, 3, 6, 20))
        for index in range(count):
            sep = b" " if index == count - 1 else b"-"
            if rng.random() < 0.05:
                sep = rng.choice((b"", b"x", b"\t"))
            text = bytes(rng.choice(b"abc .0125-\t\x00\x1b\x80\xc3\xa9\xff") for _ in range(8))
            text = text[: rng.randrange(0, 9)] * rng.choice((1, 1, 1, 5, 60))
            if rng.random() < 0.2:
                text = rng.choice((b"2.0.0 ", b"5.1.1 ", b"4.4.1\t", b"2.1.0")) + text
            end = rng.choice((b"\r\n", b"\r\n", b"\n", b"\r\r\n", b"\r"))
            out += code + sep + text + end
    return bytes(out)


def _mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    head, body = bytearray(data[:4].ljust(4, b"\0")), bytearray(data[4:])
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.randrange(9)
        pos = rng.randrange(len(body) + 1)
        if op == 0:
            head[rng.randrange(4)] = rng.randrange(256)
        elif op == 1 and body:
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        elif op == 2:
            body[pos:pos] = rng.choice(_TOKENS)
        elif op == 3 and body:
            end = min(len(body), pos + rng.randrange(1, 16))
            del body[pos:end]
        elif op == 4 and body:
            start = rng.randrange(len(body))
            piece = body[start : start + rng.randrange(1, 64)]
            body[pos:pos] = piece * rng.choice((1, 2, 8, 64))
        elif op == 5:
            other = rng.choice(corpus)[4:]
            start = rng.randrange(len(other) + 1)
            body[pos:pos] = other[start : start + rng.randrange(1, 200)]
        elif op == 6:
            body[pos:pos] = bytes([rng.randrange(256)])
        elif op == 7:
            del body[pos:]
        else:
            body[pos:pos] = _generate(rng)
    return bytes(head + body[:_MAX_INPUT])


@dataclass
class FuzzResult:
    """How a fuzz run went: inputs tried, time taken and the first failure, if any."""

    inputs: int = 0
    seconds: float = 0.0
    failure: FuzzFailure | None = None
    failing_input: bytes | None = None
    corpus: list[bytes] = field(default_factory=list)


def fuzz(
    seconds: float,
    *,
    seed: int = 0,
    factory: ParserFactory = ReplyParser,
    max_inputs: int | None = None,
) -> FuzzResult:
    """Try inputs for up to ``seconds`` (or ``max_inputs``); stop at the first failure.

    The inputs tried are a function of ``seed`` alone: a run that finds a
    failure finds the same one again with the same seed.
    """
    rng = random.Random(seed)
    corpus = [
        bytes([i % 256, (i * 7) % 256, (i * 3) % 256, i % 256]) + s
        for i, s in enumerate(SEED_CORPUS)
    ]
    result = FuzzResult(corpus=corpus)
    seen: set[tuple[bool, bool, int]] = set()
    start = time.monotonic()
    deadline = start + seconds
    queue = list(corpus)  # every seed input first, as it is
    while max_inputs is None or result.inputs < max_inputs:
        if queue:
            data = queue.pop(0)
        elif rng.random() < 0.3:
            # Half with the default limits, so that most of these get through.
            head = [10, 7, 7] if rng.random() < 0.5 else [rng.randrange(256) for _ in range(3)]
            data = bytes([*head, rng.randrange(256)]) + _generate(rng)
        else:
            data = _mutate(rng.choice(corpus), rng, corpus)
        result.inputs += 1
        try:
            check(data, factory)
        except FuzzFailure as exc:
            result.failure, result.failing_input = exc, data
            break
        # No coverage feedback; keep inputs that end differently from any before.
        limits, _, payload = decode_input(data)
        outcome = reference_parse(payload, limits)
        signature = (outcome.failed, outcome.pending, min(len(outcome.replies), 4))
        if signature not in seen or rng.random() < 0.01:
            seen.add(signature)
            if len(corpus) < 2000:
                corpus.append(data)
        if result.inputs % 64 == 0 and time.monotonic() >= deadline:
            break
    result.seconds = time.monotonic() - start
    return result


def _show(data: bytes) -> str:
    if len(data) > _SHOW:
        return f"{data[:_SHOW]!r} ... ({len(data)} octets)"
    return repr(data)


def main(argv: list[str] | None = None, factory: ParserFactory = ReplyParser) -> int:
    """Command line: run for ``--seconds``, or replay one input; 1 on a failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time to run (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--replay", metavar="BYTES", help="check one input, a Python bytes literal")
    args = parser.parse_args(argv)
    if args.replay is not None:
        data = ast.literal_eval(args.replay)
        if not isinstance(data, bytes):
            parser.error("--replay takes a bytes literal such as \"b'\\x00\\x00\\x00\\x00250 ok'\"")
        result = FuzzResult(inputs=1)
        try:
            check(data, factory)
        except FuzzFailure as exc:
            result.failure, result.failing_input = exc, data
    else:
        result = fuzz(args.seconds, seed=args.seed, factory=factory)
    rate = result.inputs / result.seconds if result.seconds else 0.0
    print(
        f"fuzz_replies: {result.inputs} inputs in {result.seconds:.1f} s "
        f"({rate:.0f}/s), seed {args.seed}, corpus {len(result.corpus)}"
    )
    if result.failure is not None:
        assert result.failing_input is not None
        limits, pieces, _ = decode_input(result.failing_input)
        print(f"FAILED: {result.failure}", file=sys.stderr)
        print(f"input: {_show(result.failing_input)}", file=sys.stderr)
        print(f"limits: {limits}; fed as {len(pieces)} piece(s)", file=sys.stderr)
        replay = shlex.quote(repr(result.failing_input))
        print(f"replay: python {sys.argv[0]} --replay {replay}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
