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


# --- the blocking driver takes a reply already parsed without a dispatch -------------


def test_the_blocking_driver_takes_parsed_replies_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import mockstream
    import smtplug
    from smtplug.actions import Receive
    from smtplug.drivers.blocking import BlockingDriver

    dispatched: list[object] = []
    perform = BlockingDriver._perform

    def counting(self: BlockingDriver, action: object) -> object:
        dispatched.append(action)
        return perform(self, action)

    monkeypatch.setattr(BlockingDriver, "_perform", counting)
    server = mockstream.MockServer()
    options = {"plugins": [server.plugin()], "block_plugins": ["plain"], "usetls": False}
    message = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplug.Client(servers=["mock.test"], **options) as client:
        result = client.sendmessage(
            message, originator="a@example.org", recipients=["b@example.org", "c@example.org"]
        )
        assert (
            result.accepted
            and result == []
            and result.recipients
            == (
                "b@example.org",
                "c@example.org",
            )
        )
        dispatched.clear()
        again = client.sendmessage(
            message, originator="a@example.org", recipients=["b@example.org"]
        )
        assert again.accepted
        # Every Receive is served by the run loop: the read, or a reply parsed before.
        assert not [action for action in dispatched if isinstance(action, Receive)]
    # Without a connection a Receive fails as before.
    driver = BlockingDriver(None, {}, client._observers, {})  # type: ignore[arg-type]

    def program() -> object:
        yield Receive(1.0, "MAIL")

    with pytest.raises(smtplug.ConnectionLostError, match="no connection is open"):
        driver.run(program())  # type: ignore[arg-type]


# --- what the server offers, asked once per EHLO reply ---------------------------------

_KEYWORDS = st.dictionaries(
    st.sampled_from(["PIPELINING", "CHUNKING", "8BITMIME", "SMTPUTF8", "SIZE", "pipelining"]),
    st.lists(st.sampled_from(["0", "1000", "x", "-1"]), max_size=1).map(tuple),
    max_size=5,
)


@given(_KEYWORDS, _KEYWORDS)
@example({"SIZE": ("1000",)}, {"SIZE": ("x",)})
def test_remembered_offers_are_the_capabilities_answers(
    one: dict[str, tuple[str, ...]], other: dict[str, tuple[str, ...]]
) -> None:
    # (The same domain: two EHLO replies of one server, before and after STARTTLS.)
    for keywords in (one, other, one):
        capabilities = Capabilities("mx.example", keywords)
        expected = (
            capabilities.has("PIPELINING"),
            capabilities.has("CHUNKING"),
            capabilities.has("8BITMIME"),
            capabilities.has("SMTPUTF8"),
            capabilities.size_limit,
        )
        assert session._offers(capabilities) == expected


def test_a_subclass_of_capabilities_is_asked_every_time() -> None:
    class Odd(Capabilities):
        def has(self, keyword: str) -> bool:
            return keyword == "PIPELINING"

    odd = Odd("mx.example", {})
    before = session._offered.cache_info()
    assert session._offers(odd) == (True, False, False, False, None)
    after = session._offered.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # not remembered


# --- the AsyncClient's one-send-at-a-time guard, written out ------------------------------


def test_async_sendmessage_one_send_at_a_time_and_one_loop() -> None:
    import asyncio

    import mockstream
    import smtplug

    server = mockstream.MockServer()
    options = {"plugins": [server.plugin()], "block_plugins": ["plain"], "usetls": False}
    message = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    client = smtplug.AsyncClient(servers=["mock.test"], **options)

    async def two_at_once() -> list[smtplug.SendResult]:
        send = client.sendmessage(message, originator="a@example.org", recipients="b@example.org")
        other = client.sendmessage(message, originator="a@example.org", recipients="c@example.org")
        return list(await asyncio.gather(send, other))

    results = asyncio.run(two_at_once())
    assert [result.accepted for result in results] == [True, True]
    # One after the other on the one connection (the lock), never interleaved.
    (received,) = server.received
    assert received.index(b"RCPT TO:<b@example.org>") < received.index(b"\r\n.\r\n")
    assert received.index(b"\r\n.\r\n") < received.index(b"RCPT TO:<c@example.org>")
    # Another loop is still refused.
    with pytest.raises(smtplug.InvalidInputError, match="another event loop"):
        asyncio.run(
            client.sendmessage(message, originator="a@example.org", recipients="b@example.org")
        )


# --- the transaction runs inline in Conduct.send, as wire.step would run it ----------


@pytest.mark.parametrize(
    ("mail_reply", "sessions"),
    [
        (b"550 5.1.0 no\r\n", 1),  # a refusal leaves the session usable
        (b"421 4.3.0 closing\r\n", 3),  # closing: reconnected once, closing again
        (b"250 ok\r\nxyz\r\n", 2),  # a broken reply poisons the connection
    ],
)
def test_the_inline_transaction_marks_the_wire_as_step_does(
    monkeypatch: pytest.MonkeyPatch, mail_reply: bytes, sessions: int
) -> None:
    import mockstream
    import smtplug
    from smtplug.wire import Wire

    steps: list[object] = []
    step = Wire.step

    def counting(self: Wire, body: object) -> object:
        steps.append(getattr(body, "__name__", body))
        return step(self, body)  # type: ignore[arg-type]

    monkeypatch.setattr(Wire, "step", counting)
    server = mockstream.MockServer()
    options = {"plugins": [server.plugin()], "block_plugins": ["plain"], "usetls": False}
    message = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    with smtplug.Client(servers=["mock.test"], **options) as client:
        client.sendmessage(message, originator="a@example.org", recipients="b@example.org")
        assert "transaction" not in steps  # greet and hello only
        server.script["MAIL"] = mail_reply
        # (Two recipients: no DATA in the flight, which this peer would answer
        # 354 after a refused MAIL, and a 354 to a transaction smtplug did not
        # make drops the connection.)
        with pytest.raises(smtplug.SMTPError):
            client.sendmessage(
                message, originator="a@example.org", recipients=["b@x.org", "c@x.org"]
            )
        del server.script["MAIL"]
        result = client.sendmessage(message, originator="a@example.org", recipients="b@example.org")
        assert result.accepted
    assert len(server.sessions) == sessions


# --- a small bytes message is scanned in place; a one-piece body needs no generator -------

_MESSAGES = st.binary(max_size=300) | st.lists(
    st.sampled_from(
        [b"To: a@b\r\n", b"X:y\n", b" folded\r\n", b"\r\n", b"\n", b"body", b"\r", b"."]
    ),
    max_size=12,
).map(b"".join)


@given(_MESSAGES)
@example(b"")
@example(b"To: a@b\r\n\r\nbody\r\n")
@example(b"not a header\r\n\r\n")
def test_a_small_bytes_message_is_scanned_as_the_windows_scan_it(data: bytes) -> None:
    from smtplug import source

    expected = source._scan_memory(memoryview(data).cast("B"))
    header, body = source._from_memory(data)
    assert header == data[: expected[0]]
    assert b"".join(bytes(chunk) for chunk in body.chunks()) == data[expected[1] :]
    assert body.size == len(data) - expected[1]
    # A bytearray (mutable: not scanned in place) gives the same.
    other_header, other_body = source._from_memory(bytearray(data))
    assert other_header == header and other_body.size == body.size


def test_a_one_piece_body_is_a_tuple_not_a_generator() -> None:
    _, body = read_message(b"X: y\r\n\r\nbody\r\n")
    body.checked = True
    message = PreparedMessage("a@example.org", ("b@example.org",), b"X: y\r\n", body, False)
    pieces = session._pieces(message, None)
    assert pieces == (b"X: y\r\nbody\r\n",)


def test_more_recipients_than_a_flight_are_encoded_every_time() -> None:
    _, body = read_message(b"X: y\r\n\r\nbody\r\n")
    body.checked = True
    many = tuple(f"r{number}@example.org" for number in range(session.BATCH + 1))
    message = PreparedMessage("a@example.org", many, b"X: y\r\n", body, False)
    capabilities = Capabilities("mock", {"PIPELINING": ()})
    before = session._mail_and_rcpt.cache_info()
    lines = session._plan(message, capabilities, False, False, None).lines
    assert lines == encoded("a@example.org", many, [], False)
    after = session._mail_and_rcpt.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)  # not remembered
