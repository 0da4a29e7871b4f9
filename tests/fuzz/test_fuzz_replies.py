"""The reply-parser fuzzer works: it passes the real parser and catches broken ones.

``.ci/run`` runs ``fuzz_replies.py`` for a minute; these tests keep its core
honest in a few seconds: the reference parser agrees with known replies, and
each deliberately broken parser below is caught (with the input shown).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_replies import (
    SEED_CORPUS,
    FuzzFailure,
    ParserFactory,
    check,
    fuzz,
    main,
    reference_parse,
)

from smtplug.errors import ProtocolError
from smtplug.protocol.replies import Reply, ReplyLimits, ReplyParser

DEFAULTS = bytes([10, 7, 7, 0])  # the header octets that choose ReplyLimits()
SCRIPT = Path(__file__).with_name("fuzz_replies.py")


def test_default_limits_header() -> None:
    from fuzz_replies import decode_input

    limits, pieces, payload = decode_input(DEFAULTS + b"250 ok\r\n")
    assert limits == ReplyLimits()
    assert b"".join(pieces) == payload == b"250 ok\r\n"


def test_reference_parser_on_known_replies() -> None:
    limits = ReplyLimits()
    ehlo = reference_parse(SEED_CORPUS[1], limits)
    assert not ehlo.failed and not ehlo.pending
    assert ehlo.replies[0].lines[2] == "SIZE 10240000"
    assert reference_parse(b"550-5.1.1 a\r\n550 b\r\n", limits).replies == (
        Reply(550, ("5.1.1 a", "b"), "5.1.1"),
    )
    assert reference_parse(b"250 x\r\r\n", limits).replies == (Reply(250, ("x\\x0d",)),)
    assert reference_parse(b"250 ok\r\n250-", limits).pending
    for bad in (b"+25 ok\r\n", "\u0662\u0665\u0660 ok\r\n".encode(), b"250-a\r\n251 b\r\n"):
        assert reference_parse(bad, limits).failed
    assert reference_parse(b"250-x\r\n" * 257, limits).failed
    assert reference_parse(b"250 " + b"x" * 2044, limits).failed  # no LF yet, already too long


def test_an_enhanced_code_has_class_2_4_or_5() -> None:
    # (atheris found the reference taking "3.1.0" in a 350: RFC 3463 has no class 3.)
    limits = ReplyLimits()
    for code, text in ((350, "3.1.0 go on"), (354, "3.0.0 go on")):
        reply = reference_parse(f"{code} {text}\r\n".encode(), limits).replies[0]
        assert reply.enhanced is None
    assert reference_parse(b"451 4.3.0 later\r\n", limits).replies[0].enhanced == "4.3.0"
    check(b"5\x07\x07\xfb250\r\n350 3.1.0\r\n249 2x\r\n")  # the input atheris found


def test_every_seed_input_passes() -> None:
    for seed in SEED_CORPUS:
        for head in (DEFAULTS, b"\x00\x00\x00\x00", b"\x03\x02\x04\x05"):
            check(head + seed)


def test_real_parser_survives_a_short_run() -> None:
    result = fuzz(2.0, seed=1)
    assert result.failure is None, (result.failure, result.failing_input)
    assert result.inputs > 1000


# --- broken parsers the fuzzer must catch ----------------------------------------------


def _one_line_too_many(limits: ReplyLimits) -> ReplyParser:
    return ReplyParser(dataclasses.replace(limits, max_lines=limits.max_lines + 1))


def _line_one_octet_longer(limits: ReplyLimits) -> ReplyParser:
    return ReplyParser(dataclasses.replace(limits, max_line_length=limits.max_line_length + 1))


def _one_octet_too_many(limits: ReplyLimits) -> ReplyParser:
    return ReplyParser(dataclasses.replace(limits, max_reply_size=limits.max_reply_size + 1))


class _LetsValueErrorOut(ReplyParser):
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if b"\0" in bytes(data):
            raise ValueError("NUL")
        super().feed(data)


class _Recovers(ReplyParser):
    def _check(self) -> None:  # forgets an earlier error
        self._error = None


class _CollapsesCrCrLf(ReplyParser):
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        super().feed(bytes(data).replace(b"\r\r\n", b"\r\n"))


class _DropsCrAtChunkEnd(ReplyParser):
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        super().feed(data[:-1] if data.endswith(b"\r") else data)


BROKEN: dict[str, ParserFactory] = {
    "max_lines off by one": _one_line_too_many,
    "max_line_length off by one": _line_one_octet_longer,
    "max_reply_size off by one": _one_octet_too_many,
    "ValueError escapes": _LetsValueErrorOut,
    "recovers after an error": _Recovers,
    "CR CR LF collapsed": _CollapsesCrCrLf,
    "CR at a chunk end dropped (split-dependent)": _DropsCrAtChunkEnd,
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_parser_is_caught(name: str) -> None:
    result = fuzz(10.0, seed=7, factory=BROKEN[name], max_inputs=20000)
    assert result.failure is not None, f"{name}: not caught in {result.inputs} inputs"
    assert result.failing_input is not None
    with pytest.raises(FuzzFailure):  # the failing input reproduces it
        check(result.failing_input, BROKEN[name])
    check(result.failing_input)  # and the real parser passes it


def test_recovering_parser_really_recovers() -> None:
    # The mutant above is what it claims: after a ProtocolError it answers again.
    parser = _Recovers()
    with pytest.raises(ProtocolError):
        parser.feed(b"xyz\r\n")
    assert parser.next_reply() is None


def test_main_reports_a_failure_with_the_input(capsys: pytest.CaptureFixture[str]) -> None:
    failing = DEFAULTS + b"250 nul\x00\r\n"
    assert main(["--replay", repr(failing)], factory=_LetsValueErrorOut) == 1
    captured = capsys.readouterr()
    assert "1 inputs" in captured.out
    assert "ValueError escaped" in captured.err
    assert repr(failing) in captured.err
    assert main(["--replay", repr(failing)]) == 0


def test_command_line_runs_for_the_time_given() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "1", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("fuzz_replies: ")
    assert int(done.stdout.split()[1]) > 100
