"""The session's one-piece path for a small message gives exactly what the
chunked path gives.

A message held in memory and checked before sending, shorter than half a
chunk, goes to the DATA (or BDAT) encoder as one piece, header and body
together, instead of the header, then each body chunk. The encoders give the
same octets for any split of their input (tests/protocol); these tests pin
that the whole step does too: the same writes (data and what observers are
shown), the same POLLs, the same ``progress`` calls, with the shortcut taken
and with it turned off (``_ONE_PIECE = False``), on any header and body octets
(bare CR and LF, dots at line starts, a CR at the end ...).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtplug import session, source
from smtplug.actions import Poll, Send
from smtplug.envelope import PreparedMessage
from smtplug.session import Timeouts, TransactionOutcome

_OCTETS = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"Subject: x", b"\r\n.\r\n"]),
    max_size=30,
).map(b"".join)


def _message(header: bytes, body: bytes) -> PreparedMessage:
    _, made = source._from_memory(b"X: y\r\n\r\n" + body)
    made.checked = True  # as api.prepare marks a body held in memory
    return PreparedMessage("a@example.org", ("b@example.org",), header, made, False)


def _run(step: str, header: bytes, body: bytes, trailer: bytes) -> list[Any]:
    """Every action of the step and every progress call, in order."""
    seen: list[Any] = []
    message = _message(header, body)
    timeouts = Timeouts()
    if step == "data":
        program = session._data_body(
            message, timeouts, TransactionOutcome(), trailer, seen.append, None
        )
        actions = program
    else:
        frames = session._bdat_frames(message, timeouts, trailer, seen.append, None)
        actions = (frame for frame, _last in frames)
    reply = None
    while True:
        try:
            action = actions.send(reply) if step == "data" else next(actions)
        except StopIteration:
            return seen
        if isinstance(action, Send):
            seen.append(("send", action.data, action.display, action.timeout))
        else:
            assert isinstance(action, Poll)
            seen.append("poll")
        reply = None


def _taken(header: bytes, body: bytes) -> bool:
    message = _message(header, body)
    pieces = list(session._pieces(message, None))
    return len(pieces) == 1


@pytest.mark.parametrize("step", ["data", "bdat"])
@given(header=_OCTETS, body=_OCTETS, quit_after=st.booleans())
@example(header=b"", body=b"", quit_after=False)
@example(header=b"A: b\r", body=b"\n.\r\n", quit_after=True)
@example(header=b".\n", body=b".", quit_after=False)
def test_one_piece_is_what_the_chunked_path_sends(step, header, body, quit_after):
    trailer = b"QUIT\r\n" if quit_after else b""
    assert _taken(header, body)
    fast = _run(step, header, body, trailer)
    session._ONE_PIECE = False
    try:
        assert not _taken(header, body) or not body  # (an empty body: one piece either way)
        chunked = _run(step, header, body, trailer)
    finally:
        session._ONE_PIECE = True
    assert fast == chunked


def test_not_taken_for_a_body_checked_as_it_goes_or_a_big_one():
    big = b"x" * 70 + b"\r\n"
    message = _message(b"A: b\r\n\r\n", big * (source.CHUNK // 2 // len(big) + 1))
    assert len(list(session._pieces(message, None))) > 1
    message = _message(b"A: b\r\n\r\n", b"body\r\n")
    guard = session._StreamGuard(None, 10_000, 0)
    assert len(list(session._pieces(message, guard))) == 2


def test_the_bound_follows_the_chunk_size(monkeypatch):
    # (tests/test_throughput.py makes chunks tiny to split a message anywhere.)
    monkeypatch.setattr(source, "CHUNK", 64)
    message = _message(b"A: b\r\n\r\n", b"x" * 30 + b"\r\n")
    assert len(list(session._pieces(message, None))) > 1


def test_a_body_in_memory_is_whole_up_to_a_chunk_and_the_same_octets() -> None:
    small = b"Subject: x\r\n\r\n" + b"line\r\n" * 100
    header, body = source._from_memory(small)
    assert body.whole is not None
    assert small.startswith(header) and small.endswith(bytes(body.whole))
    assert bytes(body.whole) == b"".join(bytes(c) for c in body.chunks())
    big = b"Subject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * (source.CHUNK // 72 + 10)
    _, body = source._from_memory(big)
    assert body.whole is None and body.size is not None and body.size > source.CHUNK
