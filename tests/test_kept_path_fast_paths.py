"""The kept path's shortcuts give exactly what the paths they shortcut give.

A kept session sending to the same recipients again encodes MAIL and the
RCPTs once (``session._mail_and_rcpt``, remembered: the command encoders are
pure functions of their arguments). These tests pin that the remembered
lines are what the encoders give, and that an address the encoders refuse
is refused every time, the same way.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtplug import InvalidInputError, session
from smtplug.envelope import PreparedMessage
from smtplug.protocol import Capabilities, commands
from smtplug.source import read_message

_ADDRESS = st.sampled_from(
    ["a@example.org", "", "jürgen@example.org", "a b@example.org", "<x>@y", '"q u"@example.org']
) | st.text('ab@.<> "é\x00', max_size=8)
_PARAMS = st.lists(
    st.sampled_from(["SIZE=10", "BODY=8BITMIME", "SMTPUTF8", "BAD PARAM"]), max_size=2
)


def encoded(sender: str, recipients: tuple[str, ...], params: list[str], utf8: bool) -> object:
    """The encoders' lines, or their error."""
    try:
        lines = [commands.mail(sender, params, smtputf8=utf8)]
        lines += [commands.rcpt(address, smtputf8=utf8) for address in recipients]
    except InvalidInputError as exc:
        return (type(exc), str(exc))
    return tuple(lines)


def remembered(sender: str, recipients: tuple[str, ...], params: list[str], utf8: bool) -> object:
    try:
        return session._mail_and_rcpt(sender, recipients, tuple(params), utf8)
    except InvalidInputError as exc:
        return (type(exc), str(exc))


@given(_ADDRESS, st.lists(_ADDRESS, min_size=1, max_size=3).map(tuple), _PARAMS, st.booleans())
@example("a@example.org", ("b@example.org",), [], False)
@example("", ("jürgen@example.org",), ["SMTPUTF8"], False)
def test_remembered_mail_and_rcpt_lines_are_the_encoders(
    sender: str, recipients: tuple[str, ...], params: list[str], utf8: bool
) -> None:
    expected = encoded(sender, recipients, params, utf8)
    assert remembered(sender, recipients, params, utf8) == expected
    assert remembered(sender, recipients, params, utf8) == expected  # (now from the memo)


def test_a_kept_session_encodes_the_same_recipients_once() -> None:
    _, body = read_message(b"X: y\r\n\r\nbody\r\n")
    body.checked = True
    recipients = ("b@example.org", "c@example.org")
    message = PreparedMessage("a@example.org", recipients, b"X: y\r\n", body, False)
    capabilities = Capabilities("mock", {"PIPELINING": (), "8BITMIME": ()})
    first = session._plan(message, capabilities, False, False, None).lines
    again = session._plan(message, capabilities, False, False, None).lines
    assert again is first  # remembered, not encoded again
    assert first == encoded("a@example.org", recipients, [], False)
    # With SIZE offered the MAIL line changes: another key.
    sized = Capabilities("mock", {"PIPELINING": (), "SIZE": ("1000",)})
    assert session._plan(message, sized, False, False, None).lines[0] == (
        b"MAIL FROM:<a@example.org> SIZE=12\r\n"
    )
    bad = PreparedMessage("a@example.org", ("b c@example.org",), b"X: y\r\n", body, False)
    for _ in range(2):
        with pytest.raises(InvalidInputError, match="whitespace"):
            session._plan(bad, capabilities, False, False, None)
