"""envelope.prepare remembers the envelope of a header block seen before, and
the remembered result is exactly what preparing it afresh gives.

A bulk sender prepares the same header block with the same originator,
recipients and header option again and again; the envelope, the transmitted
header block and the SMTPUTF8 flag are a pure function of those, unless
prepare made a value of its own (the login name, Date, Message-ID). These
tests pin that a second call takes the memo, returns what a call without
the memo returns (or raises the same error), never remembers a made value
or a failure, and stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtplug import InvalidInputError, envelope

HOST = "client.example.net"
DATE = "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
MSGID = "Message-ID: <fixed@example.com>\r\n"


@pytest.fixture(autouse=True)
def empty_memo() -> Iterator[None]:
    envelope._MEMO.clear()
    yield
    envelope._MEMO.clear()


def call(message: object, originator: object, recipients: object, header: object) -> object:
    """prepare's result as comparable values, or its error (type and text);
    what prepare makes per call (login name, Date, Message-ID) says "made"."""
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(envelope.email.utils, "formatdate", lambda **_: "made date")
            patch.setattr(envelope.email.utils, "make_msgid", lambda **_: "<made@id>")
            prepared = envelope.prepare(
                message,  # type: ignore[arg-type]
                originator=originator,  # type: ignore[arg-type]
                recipients=recipients,  # type: ignore[arg-type]
                header=header,  # type: ignore[arg-type]
                login=lambda: "made",
                hostname=HOST,
            )
    except InvalidInputError as exc:
        return (type(exc), str(exc))
    return (
        prepared.sender,
        prepared.recipients,
        prepared.header,
        prepared.resent,
        prepared.smtputf8,
        prepared.data,
    )


_ADDRESS = st.sampled_from(
    [
        "a@example.org",
        "Bob <b@example.org>",
        "c@example.org, d@example.org",
        "bare",
        "jürgen@example.org",
        "bad@@example.org",
        "<unclosed@example.org",
        '"q u"@example.org',
        "",
    ]
)
_FIELD = st.one_of(
    st.builds(
        lambda name, value: f"{name}: {value}\r\n",
        st.sampled_from(["From", "To", "cc", "Bcc", "Sender", "Resent-From", "Resent-To"]),
        _ADDRESS,
    ),
    st.sampled_from(["Subject: hi\r\n", "X-Other: été\r\n", "Subject: a\r\n folded\r\n"]),
)
_HEAD = st.builds(
    lambda dated, fields: (DATE + MSGID if dated else "") + "".join(fields),
    st.booleans(),
    st.lists(_FIELD, max_size=4),
)
_ORIGINATOR = st.one_of(st.none(), _ADDRESS)
_RECIPIENTS = st.one_of(
    st.none(),
    _ADDRESS,
    st.lists(_ADDRESS, max_size=3),
    st.lists(_ADDRESS, max_size=3).map(tuple),
)
_HEADER = st.lists(
    st.tuples(st.sampled_from(["To", "Subject", "Resent-To", "Bcc", "X-a"]), _ADDRESS),
    max_size=2,
)


_INPUTS = st.tuples(_ORIGINATOR, _RECIPIENTS, _HEADER)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_HEAD, _INPUTS, _INPUTS, st.sampled_from(["bytes", "str"]))
@example(
    DATE + MSGID + "From: a@example.org\r\nTo: b@example.org\r\n",
    (None, None, []),
    ("a@example.org", None, []),
    "bytes",
)
@example(
    DATE + MSGID + "To: bad@@example.org\r\n",
    (None, ["a@example.org"], []),
    (None, None, []),
    "bytes",
)
@example(
    "To: b@example.org\r\n", (None, None, [("Resent-To", "a@example.org")]), (None, None, []), "str"
)
def test_a_remembered_envelope_is_what_a_fresh_prepare_gives(
    head: str, one: tuple[object, object, object], other: tuple[object, object, object], kind: str
) -> None:
    # Two calls with the same header block and other options: each remembered
    # result is its own inputs', never the other's.
    text = head + "\r\nbody\r\n"
    message: object = text if kind == "str" else text.encode()
    envelope._MEMO.clear()
    size = envelope._MEMO_SIZE
    envelope._MEMO_SIZE = 0  # the reference: no memo at all
    try:
        fresh = [call(message, *inputs) for inputs in (one, other)]
    finally:
        envelope._MEMO_SIZE = size
    assert not envelope._MEMO
    for _ in range(2):
        for inputs, expected in zip((one, other), fresh, strict=True):
            assert call(message, *inputs) == expected
    remembered = 0
    for result in fresh:
        assert isinstance(result, tuple)
        if result[0] is not InvalidInputError:  # a failure is never remembered
            made = b"made" in result[2] or result[0].startswith("made@")
            remembered += not made
    # (Two inputs may be one key: a list and a tuple of the same recipients.)
    assert min(remembered, 1) <= len(envelope._MEMO) <= remembered


MESSAGE = (DATE + MSGID + "From: a@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n").encode()


def prepare(message: object = MESSAGE, **options: object) -> envelope.PreparedMessage:
    options.setdefault("originator", None)
    options.setdefault("recipients", None)
    options.setdefault("header", ())
    return envelope.prepare(
        message,  # type: ignore[arg-type]
        login=lambda: "carol",
        hostname=HOST,
        **options,  # type: ignore[arg-type]
    )


def test_a_header_seen_before_takes_the_memo() -> None:
    first = prepare()
    second = prepare()
    assert len(envelope._MEMO) == 1
    assert second.header is first.header  # the remembered bytes, not rebuilt
    assert second.recipients == ("b@example.org",)
    assert second.body is not first.body  # the body is the caller's each time
    assert bytes(second.body.chunks().__next__()) == b"body\r\n"


def test_values_made_per_call_are_not_remembered() -> None:
    bare = b"From: a@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n"
    one, two = prepare(bare), prepare(bare)
    assert not envelope._MEMO
    assert b"Message-ID:" in one.header
    assert one.header != two.header  # a Message-ID of its own each time
    no_from = (DATE + MSGID + "To: b@example.org\r\n\r\nbody\r\n").encode()
    assert prepare(no_from).sender == f"carol@{HOST}"
    assert not envelope._MEMO  # the login name is asked every time
    # Given by the caller: not remembered either (the key holds neither).
    envelope.prepare(
        MESSAGE,
        originator=None,
        recipients=None,
        header=(),
        login=lambda: "carol",
        hostname=HOST,
        date="Sat, 28 Nov 2026 12:00:00 +0000",
    )
    assert not envelope._MEMO


def test_the_inputs_are_part_of_the_key() -> None:
    prepare()
    assert prepare(recipients=["x@example.org"]).recipients == ("x@example.org",)
    assert prepare(recipients="y@example.org").recipients == ("y@example.org",)
    assert prepare(originator="o@example.org").sender == "o@example.org"
    header = prepare(header=[("Subject", "given")]).header
    assert b"Subject: given\r\n" in header
    assert prepare(header=[("Subject", "other")]).header != header
    assert len(envelope._MEMO) == 6
    # A list changed after the call does not change what was remembered.
    recipients = ["x@example.org"]
    prepare(recipients=recipients)
    recipients.append("z@example.org")
    assert prepare(recipients=recipients).recipients == ("x@example.org", "z@example.org")


class _Str(str):
    __slots__ = ()


def test_a_str_subclass_or_an_iterator_is_never_a_key() -> None:
    prepare(originator=_Str("a@example.org"))
    prepare(recipients=[_Str("b@example.org")])
    prepare(recipients=iter(["b@example.org"]))
    prepare(header=[("Subject", _Str("x"))])
    assert not envelope._MEMO
    # A header option given as a generator is read once, its pairs the key.
    prepare(header=(pair for pair in [("Subject", "x")]))
    assert b"Subject: x\r\n" in prepare(header=[("Subject", "x")]).header
    assert len(envelope._MEMO) == 1


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "_MEMO_SIZE", 4)
    for number in range(10):
        prepare(recipients=[f"r{number}@example.org"])
    assert len(envelope._MEMO) == 4
    assert prepare(recipients=["r9@example.org"]).recipients == ("r9@example.org",)
    big = [f"r{number}@example.org" for number in range(envelope._MEMO_MAX_RECIPIENTS + 1)]
    envelope._MEMO.clear()
    assert len(prepare(recipients=big).recipients) == len(big)
    assert not envelope._MEMO
