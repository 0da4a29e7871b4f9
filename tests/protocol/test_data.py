"""Tests for smtplug.protocol.data: normalisation, dot-stuffing, termination."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtplug.protocol.data import DataEncoder, decode_data, encode_data, normalise_line_endings

# Bodies that some server might take for the end of data (SMTP smuggling): the
# nine sequences of the December 2023 research, and a lone "." line at the start.
SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n.\r\n",
    b".\r\n",  # at the very start of the body: a line of its own
]


def assert_single_terminator(wire: bytes) -> None:
    """The wire ends with the terminator and holds no other."""
    if wire == b".\r\n":
        return
    assert wire.endswith(b"\r\n.\r\n")
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5
    assert not wire.startswith(b".\r\n")


def has_bare_cr_or_lf(wire: bytes) -> bool:
    crlf = wire.count(b"\r\n")
    return wire.count(b"\r") != crlf or wire.count(b"\n") != crlf


# --- examples ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\n", b"a\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"..", b"...\r\n.\r\n"),
        (b".a\r\nb", b"..a\r\nb\r\n.\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b"a\n\n\r\r\r\n", b"a\r\n\r\n\r\n\r\n\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),  # a dot inside a line is left alone
        (b"x\n.", b"x\r\n..\r\n.\r\n"),
    ],
)
def test_examples(body: bytes, wire: bytes) -> None:
    assert encode_data(body) == wire


@pytest.mark.parametrize("evil", SMUGGLING, ids=[repr(e) for e in SMUGGLING])
@pytest.mark.parametrize("where", ["alone", "middle", "start", "end"])
def test_smuggling_variants_never_terminate_early(evil: bytes, where: str) -> None:
    body = {
        "alone": evil,
        "middle": b"Subject: x\r\n\r\nhello" + evil + b"MAIL FROM:<evil@x>\r\nDATA\r\nbye\r\n",
        "start": evil + b"tail",
        "end": b"head" + evil,
    }[where]
    wire = encode_data(body)
    assert_single_terminator(wire)
    assert not has_bare_cr_or_lf(wire)
    assert decode_data(wire) == normalise_line_endings(body) + (
        b"" if body.endswith((b"\r", b"\n")) else b"\r\n"
    )


@pytest.mark.parametrize("evil", SMUGGLING, ids=[repr(e) for e in SMUGGLING])
def test_smuggling_variants_split_byte_by_byte(evil: bytes) -> None:
    body = b"x" + evil + b"y"
    encoder = DataEncoder()
    wire = b"".join(encoder.encode(body[i : i + 1]) for i in range(len(body))) + encoder.finish()
    assert wire == encode_data(body)
    assert_single_terminator(wire)


def test_cr_lf_split_across_chunks_is_one_line_end() -> None:
    encoder = DataEncoder()
    wire = encoder.encode(b"a\r") + encoder.encode(b"\nb") + encoder.finish()
    assert wire == b"a\r\nb\r\n.\r\n"


def test_cr_held_then_dot_is_stuffed() -> None:
    encoder = DataEncoder()
    first = encoder.encode(b"a\r")
    assert first == b"a"  # the CR waits for the next byte
    assert encoder.encode(b".b") == b"\r\n..b"
    assert encoder.finish() == b"\r\n.\r\n"


def test_cr_held_through_empty_chunks() -> None:
    encoder = DataEncoder()
    wire = encoder.encode(b"a\r") + encoder.encode(b"") + encoder.encode(b"\n") + encoder.finish()
    assert wire == b"a\r\n.\r\n"


def test_trailing_cr_resolved_by_finish() -> None:
    encoder = DataEncoder()
    assert encoder.encode(b"\r") == b""
    assert encoder.finish() == b"\r\n.\r\n"


def test_dot_at_chunk_start_after_line_end() -> None:
    encoder = DataEncoder()
    wire = encoder.encode(b"a\n") + encoder.encode(b".") + encoder.encode(b".") + encoder.finish()
    assert wire == b"a\r\n...\r\n.\r\n"


def test_counters() -> None:
    encoder = DataEncoder()
    out = encoder.encode(b".a\n") + encoder.encode(b"b\r")
    assert encoder.bytes_in == 5
    assert encoder.bytes_out == len(out)
    out += encoder.finish()
    assert encoder.bytes_in == 5
    assert encoder.bytes_out == len(out) == len(b"..a\r\nb\r\n.\r\n")


def test_use_after_finish_refused() -> None:
    encoder = DataEncoder()
    encoder.finish()
    assert encoder.finished
    with pytest.raises(ValueError):
        encoder.encode(b"x")
    with pytest.raises(ValueError):
        encoder.finish()


def test_normalise_line_endings() -> None:
    assert normalise_line_endings(b"") == b""
    assert normalise_line_endings(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"
    assert normalise_line_endings(b"\r\r\n\n\r") == b"\r\n\r\n\r\n\r\n"
    assert normalise_line_endings(b"\n\r") == b"\r\n\r\n"


def test_large_body_is_fast() -> None:
    body = (b"x" * 70 + b"\n." + b"y" * 20 + b"\r") * 500_000  # ~47 MB
    start = time.perf_counter()
    wire = encode_data(body)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, elapsed
    assert wire.count(b"\r\n..") == 500_000
    encoder = DataEncoder()
    step = 1 << 20
    start = time.perf_counter()
    streamed = [encoder.encode(body[i : i + step]) for i in range(0, len(body), step)]
    streamed.append(encoder.finish())
    assert time.perf_counter() - start < 3.0
    assert b"".join(streamed) == wire


# --- decode_data -------------------------------------------------------------


def test_decode_examples() -> None:
    assert decode_data(b".\r\n") == b""
    assert decode_data(b"\r\n.\r\n") == b"\r\n"
    assert decode_data(b"..a\r\n...\r\nb\r\n.\r\n") == b".a\r\n..\r\nb\r\n"


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"a",
        b"a\r\n",
        b"a\r\n.",
        b"a\r\n.\r",
        b"a\n.\n",
        b"a\r\n.\r\nb\r\n.\r\n",  # data after the terminator
        b".\r\na\r\n.\r\n",  # terminator at the start, then data
        b".a\r\n.\r\n",  # unstuffed dot at the start
        b"a\r\n.b\r\n.\r\n",  # unstuffed dot later
        b"a\nb\r\n.\r\n",  # bare LF
        b"a\rb\r\n.\r\n",  # bare CR
        b".\r\n.\r\n",
    ],
)
def test_decode_malformed(wire: bytes) -> None:
    with pytest.raises(ValueError):
        decode_data(wire)


# --- properties ----------------------------------------------------------------

# Bodies rich in the bytes that matter.
BODIES = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"a", b"..", b"\r\n.\r\n", b"\x00"]),
        max_size=40,
    ).map(b"".join),
)


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


@given(BODIES, st.lists(st.integers(0, 250), max_size=12))
def test_streamed_equals_one_shot(body: bytes, cuts: list[int]) -> None:
    encoder = DataEncoder()
    wire = b"".join(encoder.encode(chunk) for chunk in chunked(body, cuts)) + encoder.finish()
    assert wire == encode_data(body)
    assert encoder.bytes_in == len(body)
    assert encoder.bytes_out == len(wire)


@given(BODIES)
def test_exactly_one_terminator_at_the_end(body: bytes) -> None:
    wire = encode_data(body)
    if body == b"":
        assert wire == b".\r\n"
    else:
        assert wire.endswith(b"\r\n.\r\n")
        assert wire.count(b"\r\n.\r\n") == 1
        assert not wire.startswith(b".\r\n")


@given(BODIES)
def test_no_bare_cr_or_lf(body: bytes) -> None:
    assert not has_bare_cr_or_lf(encode_data(body))


@given(BODIES)
def test_decode_inverts_encode(body: bytes) -> None:
    expected = normalise_line_endings(body)
    if body and not body.endswith((b"\r", b"\n")):
        expected += b"\r\n"
    assert decode_data(encode_data(body)) == expected


@given(BODIES)
def test_every_dot_line_is_stuffed(body: bytes) -> None:
    wire = encode_data(body)
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    assert lines[-2] == b"."
    for line in lines[:-2]:
        if line.startswith(b"."):
            assert line.startswith(b"..")


@given(BODIES)
def test_normalise_is_idempotent_and_crlf_only(body: bytes) -> None:
    once = normalise_line_endings(body)
    assert normalise_line_endings(once) == once
    assert not has_bare_cr_or_lf(once)
    assert once.replace(b"\r\n", b"") == body.replace(b"\r", b"").replace(b"\n", b"")


@pytest.mark.parametrize("text", [b"line one\r\nline two\r\n", b"no line break", b"a\rb\nc"])
def test_encoders_never_return_the_callers_buffer(text: bytes) -> None:
    # The output must not change when the caller reuses its bytearray afterwards.
    for encode in (normalise_line_endings, DataEncoder().encode):
        given = bytearray(text)
        out = encode(given)  # type: ignore[operator]
        before = bytes(out)
        given[0:1] = b"."
        assert bytes(out) == before
