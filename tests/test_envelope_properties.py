"""Property tests for the envelope builder, ``smtplug.envelope.prepare``.

Addresses are generated from the RFC 5322 grammar (dot-atom and quoted local
parts, domain names and literals, display names that are atoms, quoted
strings full of specials or RFC 2047 encoded words, comments, groups), so the
recipients a message must yield are known without parsing anything; hostile
text (CVE-2023-27043-style quoting, unbalanced brackets, control characters,
anything at all) is generated too.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import email.policy
import re
from collections.abc import Sequence
from email.message import EmailMessage

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtplug import source
from smtplug.envelope import PreparedMessage, parse_addresses, prepare
from smtplug.errors import InvalidInputError
from smtplug.protocol import commands

HOST = "client.example.net"
LOGIN = "carol"
DATE = "Sat, 28 Nov 2026 12:00:00 +0000"
MSGID = "<fixed@client.example.net>"


def run(
    message: object,
    *,
    originator: str | None = None,
    recipients: str | Sequence[str] | None = None,
    header: Sequence[tuple[str, str]] = (),
) -> PreparedMessage:
    return prepare(
        message,  # type: ignore[arg-type]
        originator=originator,
        recipients=recipients,
        header=header,
        login=lambda: LOGIN,
        hostname=HOST,
        date=DATE,
        message_id=MSGID,
    )


def attempt(message: object, **options: object) -> PreparedMessage | None:
    """``run``, with InvalidInputError (the only error allowed) as None."""
    try:
        return run(message, **options)  # type: ignore[arg-type]
    except InvalidInputError:
        return None


def field_names(prepared: PreparedMessage) -> list[str]:
    parsed = email.message_from_bytes(prepared.header, policy=email.policy.compat32)
    return [name.lower() for name in parsed]


def assert_sendable(prepared: PreparedMessage) -> None:
    """Every envelope address goes through the MAIL/RCPT encoders as one clean line
    (with SMTPUTF8 for a non-ASCII address: the session asks the server for it)."""
    lines = [commands.mail(prepared.sender, smtputf8=not prepared.sender.isascii())]
    lines += [
        commands.rcpt(address, smtputf8=not address.isascii()) for address in prepared.recipients
    ]
    for line in lines:
        assert line.endswith(b"\r\n")
        assert line.count(b"\r") == line.count(b"\n") == 1
        assert b"\0" not in line


# --- strategies: the RFC 5322 address grammar ------------------------------------------

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
ATOM = st.from_regex(rf"[{_ATEXT}]{{1,8}}", fullmatch=True)
DOT_ATOM = st.lists(ATOM, min_size=1, max_size=3).map(".".join)
LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
DOMAIN = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[{}.{}.{}.{}]".format(*t)),
)
# Quoted local parts always hold something that needs the quotes (a space or
# a special), so their canonical form keeps them; '<' and '>' are refused by
# the MAIL/RCPT rules even inside quotes and are tested separately.
_QTEXT = st.text(
    alphabet=st.sampled_from("abc XYZ019.,@:;()[]\\\"!#'"), min_size=0, max_size=8
).map(lambda s: s + " ,"[len(s) % 2])


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def addr_specs(draw: st.DrawFn) -> tuple[str, str]:
    """(text as written, the addr-spec expected), both the same but for quoting."""
    domain = draw(DOMAIN)
    if draw(st.booleans()):
        local = draw(DOT_ATOM)
        return f"{local}@{domain}", f"{local}@{domain}"
    written = quote(draw(_QTEXT))
    return f"{written}@{domain}", f"{written}@{domain}"


_PHRASE = st.lists(st.from_regex(r"[A-Za-z0-9'+_-]{1,8}", fullmatch=True), min_size=1, max_size=3)
_PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda s: s.isprintable())


def encoded_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode()).decode("ascii") + "?="


DISPLAY_NAMES = st.one_of(
    _PHRASE.map(" ".join),
    # quoted strings full of what would otherwise be separators or addresses
    st.text(alphabet=st.sampled_from('ab ,;:<>@()."\\'), min_size=1, max_size=16).map(quote),
    st.builds(lambda local, domain: quote(f"{local}@{domain}"), DOT_ATOM, DOMAIN),
    _PRINTABLE.map(encoded_word),
)
_PLAIN_COMMENTS = ["(Bob)", "(a (nested) comment)", "(see <evil@attacker.example>, ok)"]
# A double quote in a comment is just text (RFC 5322 ctext); see the BUG below.
_QUOTE_COMMENTS = ['(quote " inside)', '(")']
COMMENTS = st.sampled_from(_PLAIN_COMMENTS)


@st.composite
def mailboxes(draw: st.DrawFn, comments: st.SearchStrategy[str] = COMMENTS) -> tuple[str, str]:
    """(mailbox as written, its addr-spec)."""
    written, expected = draw(addr_specs())
    form = draw(st.integers(0, 3))
    if form == 1:
        written = f"{draw(DISPLAY_NAMES)} <{written}>"
    elif form == 2:
        written = f"<{written}>"
    if draw(st.booleans()):
        written = f"{written} {draw(comments)}"
    return written, expected


@st.composite
def address_lists(
    draw: st.DrawFn, comments: st.SearchStrategy[str] = COMMENTS
) -> tuple[str, list[str]]:
    """(an address-list as written, the addr-specs it must yield, in order)."""
    items: list[str] = []
    expected: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 5))
        if kind == 0:  # a group, possibly empty
            members = draw(st.lists(mailboxes(comments), max_size=3))
            name = draw(_PHRASE.map(" ".join))
            items.append(f"{name}: {', '.join(m for m, _ in members)};")
            expected.extend(e for _, e in members)
        elif kind == 1:  # a bare local part: qualified with the host name
            local = draw(DOT_ATOM)
            items.append(local)
            expected.append(f"{local}@{HOST}")
        else:
            written, address = draw(mailboxes(comments))
            items.append(written)
            expected.append(address)
    separator = draw(st.sampled_from([", ", ",", " , "]))
    return separator.join(items), expected


RECIPIENT_FIELDS = ("to", "cc", "dcc", "bcc")
FIELD_SPELLINGS = {
    "to": ["To", "to", "TO"],
    "cc": ["Cc", "cc", "CC"],
    "dcc": ["Dcc", "DCC"],
    "bcc": ["Bcc", "bcc", "BCC"],
}


@st.composite
def recipient_fields(draw: st.DrawFn) -> list[tuple[str, str, list[str]]]:
    """(name as spelt, value, expected addresses) for some To/Cc/Dcc/Bcc fields."""
    fields = []
    for _ in range(draw(st.integers(0, 4))):
        lower = draw(st.sampled_from(RECIPIENT_FIELDS))
        value, expected = draw(address_lists())
        fields.append((draw(st.sampled_from(FIELD_SPELLINGS[lower])), value, expected))
    return fields


def raw_message(fields: Sequence[tuple[str, str]], *, fold: bool, ending: bytes) -> bytes:
    lines = []
    for name, value in fields:
        if fold:  # folding at a space (RFC 5322 3.2.2) never changes the value
            value = value.replace(" ", "\r\n ", 1)
        lines.append(f"{name}: {value}".encode().replace(b"\r\n", ending))
    return ending.join([b"Subject: test", *lines, b"", b"body"])


def expected_recipients(
    message_fields: Sequence[tuple[str, str, list[str]]],
    option_fields: Sequence[tuple[str, str, list[str]]],
) -> list[str]:
    """Tcllib's rule: To, cc, Dcc, Bcc in that order, each from the header
    option when it names that field, else from the message."""
    result: list[str] = []
    for lower in RECIPIENT_FIELDS:
        source = (
            option_fields
            if any(n.lower() == lower for n, _, _ in option_fields)
            else (message_fields)
        )
        for name, _, expected in source:
            if name.lower() == lower:
                result.extend(expected)
    return result


# --- recipients: exactly the generated addresses ---------------------------------------


@given(address_lists())
def test_recipients_option_yields_the_addresses_written(case: tuple[str, list[str]]) -> None:
    value, expected = case
    if not expected:  # only empty groups: no recipients at all
        with pytest.raises(InvalidInputError):
            run(b"Subject: x\r\n\r\nbody", recipients=value)
        return
    prepared = run(b"Subject: x\r\n\r\nbody", recipients=value)
    assert list(prepared.recipients) == expected
    assert_sendable(prepared)


@given(st.lists(address_lists(), min_size=1, max_size=3))
def test_recipients_list_is_the_concatenation(cases: list[tuple[str, list[str]]]) -> None:
    expected = [address for _, addresses in cases for address in addresses]
    prepared = attempt(b"Subject: x\r\n\r\nbody", recipients=[value for value, _ in cases])
    if not expected:
        assert prepared is None
        return
    assert prepared is not None
    assert list(prepared.recipients) == expected


@given(
    recipient_fields(),
    recipient_fields(),
    st.booleans(),
    st.sampled_from([b"\r\n", b"\n"]),
)
@example(
    message_fields=[],
    option_fields=[("To", '0: ;, " "@0.0', ['" "@0.0']), ("Dcc", '" "@0', ['" "@0'])],
    fold=False,
    ending=b"\r\n",
)
@example(  # the hidden address is the tail of the generated From address
    message_fields=[],
    option_fields=[("Dcc", "l", ["l@client.example.net"])],
    fold=False,
    ending=b"\r\n",
)
def test_recipients_from_fields_match_the_reference(
    message_fields: list[tuple[str, str, list[str]]],
    option_fields: list[tuple[str, str, list[str]]],
    fold: bool,
    ending: bytes,
) -> None:
    raw = raw_message([(n, v) for n, v, _ in message_fields], fold=fold, ending=ending)
    header = [(n, v) for n, v, _ in option_fields]
    expected = expected_recipients(message_fields, option_fields)
    if not expected:
        with pytest.raises(InvalidInputError, match="no recipients"):
            run(raw, header=header)
        return
    prepared = run(raw, header=header)
    assert list(prepared.recipients) == expected
    assert prepared.sender == f"{LOGIN}@{HOST}"
    assert_sendable(prepared)
    # Bcc and Dcc, from the message or the option, are never transmitted.
    names = field_names(prepared)
    assert "bcc" not in names and "dcc" not in names
    if any(n.lower() == "to" for n, _, _ in option_fields):
        assert names.count("to") == 1  # the option's values joined into one field
    else:
        assert names.count("to") == sum(n.lower() == "to" for n, _, _ in message_fields)
    hidden = {
        address
        for name, _, addresses in message_fields + option_fields
        if name.lower() in ("bcc", "dcc")
        for address in addresses
    }
    shown = {
        address
        for name, _, addresses in message_fields + option_fields
        if name.lower() in ("to", "cc")
        for address in addresses
    }
    for address in hidden - shown:
        if not any(address in other for other in shown):  # '" "@0' is in '" "@0.0'
            # As an address of its own, not the tail of another one: the hidden
            # 'l@client.example.net' is in the generated 'carol@client.example.net'.
            alone = re.compile(rb"(?<![\w.!#$%&'*+/=?^`{|}~\-])" + re.escape(address.encode()))
            assert alone.search(prepared.header) is None


# --- Bcc and Dcc: never in the transmitted header --------------------------------------

_HIDDEN_NAMES = st.sampled_from(
    ["Bcc", "bcc", "BCC", "bCc", "Dcc", "DCC", "Resent-Bcc", "resent-bcc", "RESENT-DCC"]
)


@given(
    _HIDDEN_NAMES,
    st.sampled_from([":", " :", "\t:", ":\t"]),
    st.booleans(),
    st.sampled_from([b"\r\n", b"\n"]),
    st.booleans(),
)
def test_hidden_fields_never_transmitted_whatever_their_spelling(
    name: str, colon: str, folded: bool, ending: bytes, resent: bool
) -> None:
    secret = "zz-secret@hidden.example"
    value = f"Secret\r\n <{secret}>" if folded else f"Secret <{secret}>"
    raw = ending.join(
        [
            b"From: a@example.com",
            b"To: b@example.org",
            f"{name}{colon} {value}".encode().replace(b"\r\n", ending),
            b"Subject: s",
            b"",
            b"body",
        ]
    )
    header = [("Resent-To", "n@example.org")] if resent else []
    prepared = run(raw, header=header)
    assert secret.encode() not in prepared.header
    assert not {"bcc", "dcc", "resent-bcc", "resent-dcc"} & set(field_names(prepared))
    # The hidden recipient is in the envelope exactly when its field is read.
    counted = name.lower().startswith("resent-") == resent
    assert (secret in prepared.recipients) == counted


@given(_HIDDEN_NAMES, address_lists())
def test_hidden_fields_in_the_header_option_never_transmitted(
    name: str, case: tuple[str, list[str]]
) -> None:
    value, expected = case
    visible = ("Resent-To" if name.lower().startswith("resent-") else "To", "t@x.example")
    prepared = run(b"To: b@example.org\r\n\r\nbody", header=[(name, value), visible])
    assert list(prepared.recipients) == ["t@x.example", *expected]
    assert not {"bcc", "dcc", "resent-bcc", "resent-dcc"} & set(field_names(prepared))
    # What is sent without the hidden field (an address may be part of it:
    # "d@client.example.net" is in the Message-ID) is all that is sent with it.
    assert prepared.header == run(b"To: b@example.org\r\n\r\nbody", header=[visible]).header


# --- the caller's message and options are never changed -------------------------------


@given(recipient_fields(), st.booleans(), st.text(max_size=20))
def test_callers_message_is_never_mutated(
    fields: list[tuple[str, str, list[str]]], multipart: bool, subject: str
) -> None:
    msg = EmailMessage()
    for name, value, _ in fields:
        try:
            msg[name] = value
        except (ValueError, TypeError):
            continue  # EmailMessage itself refuses some values; not what is tested
    msg.set_content("body\n")
    if multipart:
        msg.make_mixed()  # no boundary yet: serialising would set one
    header = [("Subject", subject), ("To", "x@example.org"), ("Bcc", "y@example.org")]
    before_items = [(k, str(v)) for k, v in msg.items()]
    before_header = copy.deepcopy(header)
    before_boundary = msg.get_boundary()
    attempt(msg, header=header)
    assert [(k, str(v)) for k, v in msg.items()] == before_items
    assert msg.get_boundary() == before_boundary
    assert header == before_header


@given(st.binary(max_size=200))
def test_callers_buffer_is_never_mutated(tail: bytes) -> None:
    buffer = bytearray(b"To: b@example.org\r\nBcc: c@example.org\r\n" + tail)
    before = bytes(buffer)
    attempt(buffer)
    attempt(memoryview(buffer))
    assert buffer == before


# --- anything at all: InvalidInputError or a sendable envelope ---------------------------

# Text built from the pieces that make address parsing ambiguous.
_TRICKY = st.lists(
    st.sampled_from(
        [
            '"',
            "<",
            ">",
            "(",
            ")",
            ",",
            ";",
            ":",
            "@",
            "\\",
            " ",
            ".",
            "[",
            "]",
            "alice",
            "alice@example.org",
            "bob@evil.example",
            "evil.example",
            "=?utf-8?q?x?=",
            "\r\n",
            "\n",
            "\x00",
            "\t",
            "\x85",
            "\u2028",
            "é",
            "\ud800",
        ]
    ),
    max_size=14,
).map("".join)
ANY_TEXT = st.one_of(_TRICKY, st.text(max_size=40))


@given(ANY_TEXT, st.one_of(st.none(), ANY_TEXT))
def test_any_recipients_and_originator_only_invalid_input(
    recipients: str, originator: str | None
) -> None:
    prepared = attempt(b"Subject: x\r\n\r\nbody", recipients=recipients, originator=originator)
    if prepared is not None:
        assert_sendable(prepared)
        assert prepared.recipients


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(
                    ["To", "Cc", "Bcc", "From", "Subject", "Sender", "Resent-To", "X-Tag"]
                ),
                st.text(max_size=10),
            ),
            ANY_TEXT,
        ),
        max_size=4,
    )
)
def test_any_header_option_only_invalid_input_and_no_injected_field(
    header: list[tuple[str, str]],
) -> None:
    prepared = attempt(b"To: b@example.org\r\nSubject: s\r\n\r\nbody", header=header)
    if prepared is None:
        return
    assert_sendable(prepared)
    allowed = {"to", "subject"} | {name.lower() for name, _ in header}
    prefixes = ("resent-",) if prepared.resent else ("",)
    allowed |= {p + n for p in prefixes for n in ("from", "sender", "date", "message-id")}
    assert set(field_names(prepared)) <= allowed - {"bcc", "dcc", "resent-bcc", "resent-dcc"}
    assert b"\0" not in prepared.header
    assert prepared.header.endswith(b"\r\n\r\n")


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from([b"To: ", b"Bcc: ", b"From: ", b"\r\n", b"\n", b"\r", b" ", b":"]),
            _TRICKY.map(lambda s: s.encode("utf-8", "surrogatepass")),
        ),
        max_size=12,
    ).map(b"".join)
)
def test_any_message_bytes_only_invalid_input(raw: bytes) -> None:
    prepared = attempt(raw, recipients="r@example.org")
    if prepared is not None:
        assert_sendable(prepared)
        assert "bcc" not in field_names(prepared)


# --- ambiguous forms: rejected, or exactly one clear address ----------------------------


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        # CVE-2023-27043 style: the quoted part is a local part, never an address of its own
        ('"alice@example.org"@evil.example', '"alice@example.org"@evil.example'),
        ('"alice@example.org,bob@evil"@example.com', '"alice@example.org,bob@evil"@example.com'),
        ('"alice@example.org" <bob@example.org>', "bob@example.org"),
        ('"alice@example.org,bob@evil" <bob@example.org>', "bob@example.org"),
        ('"alice@example.org,bob@evil"', None),
        ("alice@example.org)<bob@example.org>", None),
        ("alice@example.org(<bob@example.org>", None),
        ("alice@example.org<bob@example.org>", None),
        ("alice@example.org <bob@example.org>", None),
        ('alice@example.org, "bob@evil.example', None),
        # unbalanced or doubled angle brackets
        ("<alice@example.org", None),
        ("alice@example.org>", None),
        ("<<alice@example.org>>", None),
        ("<@relay.example:alice@example.org>", None),
        # comments, nested or not, are not addresses
        ("alice@example.org (x (y) z)", "alice@example.org"),
        ("alice@example.org (bob@evil.example)", "alice@example.org"),
        ("(bob@evil.example) alice@example.org", "alice@example.org"),
        ("alice@example.org (x (y z", None),
        ("alice@example.org x)", None),
        # encoded words are display text, not addresses
        ("=?utf-8?q?bob=40evil.example?= <alice@example.org>", "alice@example.org"),
        ("=?utf-8?q?bob?=@evil.example", None),
        ('"a<b"@example.org', None),
        ("alice@example.org;", None),
    ],
)
def test_ambiguous_forms(text: str, outcome: str | None) -> None:
    if outcome is None:
        with pytest.raises(InvalidInputError):
            run(b"\r\nbody", recipients=text)
        with pytest.raises(InvalidInputError):
            run(b"\r\nbody", recipients="r@example.org", originator=text)
        return
    prepared = run(b"\r\nbody", recipients=text, originator=text)
    assert prepared.recipients == (outcome,)
    assert prepared.sender == outcome
    assert_sendable(prepared)


@given(_TRICKY)
def test_tricky_text_gives_clear_addresses(text: str) -> None:
    """Each accepted address is one address: its domain is plain, and there are
    never more addresses than '@' signs written."""
    try:
        addresses = parse_addresses("recipients", text, hostname=HOST)
    except InvalidInputError:
        return
    assert len(addresses) <= text.count(",") + 1
    for address in addresses:
        commands.rcpt(address, smtputf8=not address.isascii())
        domain = address.rpartition("@")[2]
        assert domain and not set(domain) & set('"(),;:<>@\\ \t')


# --- bugs these properties found (fixed) ---------------------------------------------


@given(st.integers(1, 1000))
@example(500)
def test_every_accepted_address_fits_a_command_line(length: int) -> None:
    address = "x" * length + "@example.org"
    prepared = attempt(b"\r\nbody", recipients=address, originator=address)
    if prepared is not None:
        assert_sendable(prepared)


@given(st.one_of(address_lists().map(lambda case: case[0]), _TRICKY))
@example('"a..b"@example.org')
@example("a@[x\\]y]")
def test_accepted_addresses_parse_again_to_themselves(text: str) -> None:
    try:
        addresses = parse_addresses("recipients", text, hostname=HOST)
    except InvalidInputError:
        return
    for address in addresses:
        assert parse_addresses("again", address, hostname=HOST) == [address]


@given(address_lists(comments=st.sampled_from(_PLAIN_COMMENTS + _QUOTE_COMMENTS)))
@example(('(") "),x"@example.org', ['"),x"@example.org']))
def test_double_quote_in_a_comment_changes_nothing(case: tuple[str, list[str]]) -> None:
    value, expected = case
    try:
        addresses = parse_addresses("recipients", value, hostname=HOST)
    except InvalidInputError:
        addresses = None
    assert addresses == expected


@given(_TRICKY)
@example("a@")
@example("<")
@example('"')
@example(" :")
@example(">,.")
@example(":;<")
def test_malformed_addresses_raise_only_invalid_input_error(text: str) -> None:
    routes: list[dict[str, object]] = [
        {"recipients": text},
        {"recipients": "r@example.org", "originator": text},
        {"header": [("To", text)]},
    ]
    for options in routes:
        with contextlib.suppress(InvalidInputError):
            run(b"\r\nbody", **options)  # type: ignore[arg-type]
    with contextlib.suppress(InvalidInputError):
        run(f"To: {text}\r\n\r\nbody".encode("utf-8", "surrogatepass"))


# -- the one-match fast path agrees with the line-by-line scan ----------------

# Pieces a header block is made of, the awkward ones included: line endings of
# every kind, bare CRs inside lines, continuations, non-field lines, empty lines.
_HEADER_PIECES = st.sampled_from(
    [
        b"Subject: hello",
        b"To: a@example.org",
        b"X-Empty:",
        b"Name-With-Dash : spaced",
        b" folded",
        b"\tfolded",
        b"not a field",
        b":no name",
        b"\r\n",
        b"\n",
        b"\r",
        b"a\rb",
        b"body text",
        b"",
    ]
)


@given(st.lists(_HEADER_PIECES, max_size=12).map(b"".join), st.booleans())
@example(b"Subject: a\rb\r\n\r\nbody", True)
@example(b" x\r\n\r\nbody", False)
@example(b"Subject: a\r\n", False)
def test_header_scan_fast_path_agrees_with_the_line_scan(data: bytes, final: bool) -> None:
    assert source.scan_header(data, final) == source._scan_lines(data, final)


# -- address fields: any text is InvalidInputError or the same addresses, never another --

ADDRESS_FIELD_NAMES = [
    f"{prefix}{name}"
    for prefix in ("", "Resent-")
    for name in ("From", "Sender", "To", "Cc", "Bcc", "Reply-To")
]
# Text made of what the standard library's address parser trips over: unicode
# line breaks and separators, controls, lone surrogates, unbalanced quotes,
# brackets and comments, encoded words, and plain address pieces.
_ODD = st.lists(
    st.one_of(
        st.sampled_from('\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e\xa0\u3000"<>()[],;:@\\. \t'),
        st.sampled_from(["a", "é", "=?utf-8?q?x?=", "\ud800", "\udcff", "x@y.example"]),
        st.characters(categories=["Zl", "Zp", "Zs", "Cc", "Cf", "Cs", "Co"]),
    ),
    max_size=12,
).map("".join)
ADDRESS_TEXT = st.one_of(_ODD, _TRICKY, st.text(max_size=30), address_lists().map(lambda c: c[0]))
OPTIONAL_TEXT = st.one_of(st.none(), ADDRESS_TEXT)


@given(
    st.lists(st.tuples(st.sampled_from(ADDRESS_FIELD_NAMES), ADDRESS_TEXT), max_size=3),
    OPTIONAL_TEXT,
    st.one_of(OPTIONAL_TEXT, st.lists(ADDRESS_TEXT, max_size=2)),
)
@example(header=[("Sender", "\x85<")], originator=None, recipients="r@example.org")
@example(header=[("Sender", "\x85<")], originator=None, recipients=None)
@example(header=[("To", "<alice@")], originator=None, recipients="r@example.org")
def test_any_text_in_address_fields_and_envelope_only_invalid_input(
    header: list[tuple[str, str]], originator: str | None, recipients: str | list[str] | None
) -> None:
    try:
        prepared = run(
            b"To: b@example.org\r\n\r\nbody",
            header=header,
            originator=originator,
            recipients=recipients,
        )
    except InvalidInputError:
        return
    assert_sendable(prepared)
    # Each address field given is sent holding exactly the addresses it was
    # parsed to: refused or sent as written, never "repaired".
    sent = email.message_from_bytes(prepared.header, policy=email.policy.compat32)
    by_name: dict[str, list[str]] = {}
    for name, value in header:
        by_name.setdefault(name.lower(), []).append(value)
    for lower, values in by_name.items():
        if lower in ("bcc", "resent-bcc"):
            continue
        written = sent.get_all(lower)
        assert written is not None and len(written) == 1
        unfolded = "".join(str(written[0]).replace("\r\n", "\n").split("\n"))
        assert parse_addresses("sent", unfolded, hostname=HOST) == parse_addresses(
            "given", ", ".join(values), hostname=HOST
        )


@given(st.sampled_from([*ADDRESS_FIELD_NAMES, "Dcc"]), ADDRESS_TEXT, st.booleans())
@example("Sender", "\x85<", True)
@example("To", "<alice@", True)
def test_any_text_in_a_message_address_field_only_invalid_input(
    name: str, text: str, with_recipients: bool
) -> None:
    recipients = "r@example.org" if with_recipients else None
    raw = f"From: a@example.com\r\n{name}: {text}\r\n\r\nbody".encode("utf-8", "surrogatepass")
    prepared = attempt(raw, recipients=recipients)
    if prepared is not None:
        assert_sendable(prepared)
        if not {"\r", "\n"} & set(text):  # else the field ended where the text broke
            # Accepted: then the field is well-formed, read for the envelope or not.
            parse_addresses(name, text.strip(), hostname=HOST)
    msg = EmailMessage()
    try:
        msg[name] = text
    except Exception:  # EmailMessage refuses (or trips over) some values itself
        return
    msg.set_content("body\n")
    with contextlib.suppress(InvalidInputError):
        assert_sendable(run(msg, recipients=recipients))
