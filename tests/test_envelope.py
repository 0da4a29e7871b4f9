"""The header-derivation rules of Tcllib's sendmessage, as smtplug applies them."""

from __future__ import annotations

import email
import email.policy
import smtplib
from email.message import EmailMessage

import pytest

import smtplug
from smtplug import InvalidInputError
from smtplug.envelope import prepare

HOST = "client.example.net"


def run(message, **options):
    options.setdefault("originator", None)
    options.setdefault("recipients", None)
    options.setdefault("header", [])
    return prepare(
        message,
        login=lambda: "carol",
        hostname=HOST,
        date="Sat, 28 Nov 2026 12:00:00 +0000",
        message_id="<fixed@client.example.net>",
        **options,
    )


def fields(prepared):
    """The transmitted header fields as (name, value) pairs, in order."""
    parsed = email.message_from_bytes(prepared.data, policy=email.policy.compat32)
    return [(name, " ".join(str(value).split())) for name, value in parsed.items()]


def names(prepared):
    return [name for name, _ in fields(prepared)]


def body(prepared):
    return prepared.data.split(b"\r\n\r\n", 1)[1]


def simple(body_text="This is the message.\n", **headers):
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body_text)
    return msg


def test_originator_from_login_name_qualified_with_host_name():
    p = run(simple(Subject="s"), recipients="someone@somewhere.example")
    assert p.sender == f"carol@{HOST}"
    assert ("From", f"carol@{HOST}") in fields(p)
    assert "Sender" not in names(p)
    assert p.recipients == ("someone@somewhere.example",)


def test_originator_from_from_field_of_the_message():
    p = run(simple(From="Alice <alice@example.com>", To="bob@example.org"))
    assert p.sender == "alice@example.com"
    assert p.recipients == ("bob@example.org",)
    assert names(p).count("From") == 1
    assert "Sender" not in names(p)


def test_header_option_is_consulted_before_the_message():
    p = run(
        simple(From="alice@example.com", To="bob@example.org"),
        header=[("From", "Dave <dave@example.com>"), ("To", "erin@example.org")],
    )
    assert p.sender == "dave@example.com"
    assert p.recipients == ("erin@example.org",)
    # The header option replaces the message's own fields of that name.
    assert [v for n, v in fields(p) if n == "From"] == ["Dave <dave@example.com>"]
    assert [v for n, v in fields(p) if n == "To"] == ["erin@example.org"]


def test_repeated_address_fields_in_header_option_are_joined():
    p = run(
        simple(), header=[("From", "a@example.com"), ("To", "b@x.example"), ("To", "c@y.example")]
    )
    assert [v for n, v in fields(p) if n == "To"] == ["b@x.example, c@y.example"]
    assert p.recipients == ("b@x.example", "c@y.example")


def test_repeated_other_fields_are_kept_separate():
    p = run(simple(To="b@x.example"), header=[("Comments", "one"), ("Comments", "two")])
    assert [v for n, v in fields(p) if n == "Comments"] == ["one", "two"]


def test_originator_option_differing_from_from_adds_sender_with_originator():
    p = run(
        simple(From="alice@example.com", To="bob@example.org"),
        originator="list-bounces@example.com",
    )
    assert p.sender == "list-bounces@example.com"
    assert ("Sender", "list-bounces@example.com") in fields(p)


def test_no_sender_added_when_given():
    p = run(
        simple(From="alice@example.com", To="bob@example.org", Sender="s@example.com"),
        originator="list-bounces@example.com",
    )
    assert [v for n, v in fields(p) if n == "Sender"] == ["s@example.com"]


def test_no_sender_when_originator_equals_from_address():
    p = run(
        simple(From="Alice <alice@example.com>", To="bob@example.org"),
        originator="alice@example.com",
    )
    assert "Sender" not in names(p)


def test_missing_from_is_added_with_originator():
    p = run(simple(To="bob@example.org"), originator="alice@example.com")
    assert ("From", "alice@example.com") in fields(p)
    assert "Sender" not in names(p)


def test_null_originator_adds_neither_from_nor_sender():
    p = run(simple(To="bob@example.org"), originator="")
    assert p.sender == ""
    assert "From" not in names(p)
    assert "Sender" not in names(p)


def test_more_than_one_mailbox_in_from_is_refused_without_originator():
    with pytest.raises(InvalidInputError, match="exactly one mailbox"):
        run(simple(From="a@example.com, b@example.com", To="bob@example.org"))


def test_multiple_from_mailboxes_with_originator_adds_sender():
    p = run(
        simple(From="a@example.com, b@example.com", To="bob@example.org"),
        originator="a@example.com",
    )
    assert ("Sender", "a@example.com") in fields(p)


def test_recipients_from_to_cc_dcc_bcc_and_bcc_dcc_never_sent():
    p = run(
        simple(
            From="a@example.com", To="t@example.org", Cc="c@example.org", Bcc="hidden@example.org"
        ),
        header=[("Dcc", "d@example.org")],
    )
    assert p.recipients == ("t@example.org", "c@example.org", "d@example.org", "hidden@example.org")
    assert "Bcc" not in names(p) and "Dcc" not in names(p)
    assert b"hidden@example.org" not in p.data
    assert b"d@example.org" not in p.data


def test_recipients_option_overrides_headers():
    p = run(
        simple(From="a@example.com", To="t@example.org", Bcc="b@example.org"),
        recipients="Someone <x@example.org>, y@example.org",
    )
    assert p.recipients == ("x@example.org", "y@example.org")
    assert "Bcc" not in names(p)


def test_recipients_as_list():
    p = run(simple(), recipients=["Someone <x@example.org>", "y@example.org"])
    assert p.recipients == ("x@example.org", "y@example.org")


def test_only_cc_recipients_is_fine_and_no_empty_bcc_is_added():
    p = run(simple(From="a@example.com", Cc="c@example.org"))
    assert p.recipients == ("c@example.org",)
    assert "Bcc" not in names(p)
    assert "To" not in names(p)


def test_no_recipients_at_all_is_an_error():
    with pytest.raises(InvalidInputError, match="no recipients"):
        run(simple(From="a@example.com"))


def test_empty_recipients_option_is_an_error():
    with pytest.raises(InvalidInputError, match="empty"):
        run(simple(), recipients=[])


def test_resent_mode_switches_every_field():
    original = simple(
        From="a@example.com",
        To="b@example.org",
        Date="Mon, 01 Jan 2024 00:00:00 +0000",
        Message_ID="<orig@example.com>",
    )
    p = run(
        original,
        header=[
            ("Resent-From", "fwd@example.com"),
            ("Resent-To", "new@example.org"),
            ("Resent-Bcc", "secret@example.org"),
        ],
    )
    assert p.resent
    assert p.sender == "fwd@example.com"
    assert p.recipients == ("new@example.org", "secret@example.org")
    f = fields(p)
    assert ("Resent-Date", "Sat, 28 Nov 2026 12:00:00 +0000") in f
    assert ("Resent-Message-ID", "<fixed@client.example.net>") in f
    # The original fields stay as they were.
    assert ("From", "a@example.com") in f and ("To", "b@example.org") in f
    assert ("Date", "Mon, 01 Jan 2024 00:00:00 +0000") in f
    assert "Resent-Bcc" not in names(p)
    assert b"secret@example.org" not in p.data


def test_resent_sender_added_with_originator():
    p = run(
        simple(From="a@example.com", To="b@example.org"),
        header=[("Resent-From", "fwd@example.com"), ("Resent-To", "n@example.org")],
        originator="bounce@example.com",
    )
    assert ("Resent-Sender", "bounce@example.com") in fields(p)
    assert "Sender" not in names(p)


def test_date_and_message_id_added_only_when_missing():
    p = run(simple(To="b@example.org"))
    assert ("Date", "Sat, 28 Nov 2026 12:00:00 +0000") in fields(p)
    assert ("Message-ID", "<fixed@client.example.net>") in fields(p)
    q = run(
        simple(
            To="b@example.org",
            Date="Mon, 01 Jan 2024 00:00:00 +0000",
            Message_ID="<mine@example.com>",
        )
    )
    assert names(q).count("Date") == 1 and names(q).count("Message-ID") == 1
    assert ("Message-ID", "<mine@example.com>") in fields(q)


def test_computed_date_and_message_id_when_not_given():
    p = prepare(
        simple(To="b@example.org"),
        originator=None,
        recipients=None,
        header=[],
        login=lambda: "carol",
        hostname=HOST,
    )
    parsed = email.message_from_bytes(p.data)
    assert email.utils.parsedate_to_datetime(parsed["Date"]) is not None
    assert parsed["Message-ID"].endswith(f"@{HOST}>")


def test_login_is_only_asked_when_needed():
    def no_login():
        raise AssertionError("login asked for although From is present")

    prepare(
        simple(From="a@example.com", To="b@example.org"),
        originator=None,
        recipients=None,
        header=[],
        login=no_login,
        hostname=HOST,
    )


@pytest.mark.parametrize(
    "name", ["Content-Type", "content-transfer-encoding", "Content-MD5", "MIME-Version"]
)
def test_disallowed_header_names(name):
    with pytest.raises(InvalidInputError, match="cannot be user-specified"):
        run(simple(To="b@example.org"), header=[(name, "x")])


@pytest.mark.parametrize("bad", ["a\r\nBcc: evil@example.org", "a\nb", "a\rb", "a\x00b"])
def test_control_characters_in_header_values_refused(bad):
    with pytest.raises(InvalidInputError, match="control"):
        run(simple(To="b@example.org"), header=[("Subject", bad)])


@pytest.mark.parametrize("name", ["Subject", "To", "Reply-To"])
def test_lone_surrogate_in_a_header_value_refused(name):
    # No encoding can write it; the stdlib's header code would raise UnicodeEncodeError.
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        run(simple(To="b@example.org"), header=[(name, "\ud800")])


@pytest.mark.parametrize("bad", ["\ud800@example.org", "a@\udcff.example"])
def test_lone_surrogate_in_an_address_refused(bad):
    with pytest.raises(InvalidInputError):
        run(simple(), recipients=bad)
    with pytest.raises(InvalidInputError):
        run(simple(To="b@example.org"), originator=bad)


@pytest.mark.parametrize("bad", ["a@example.com\r\nRCPT TO:<x@y>", "a@example.com\n", "x\x00@y.z"])
def test_control_characters_in_addresses_refused(bad):
    with pytest.raises(InvalidInputError):
        run(simple(), recipients=bad)
    with pytest.raises(InvalidInputError):
        run(simple(To="b@example.org"), originator=bad)


@pytest.mark.parametrize(
    "bad",
    ["<a@example.com", "a@b@c", "foo bar", "alice@example.com <bob@x.y>", "Joe <>", "@example.com"],
)
def test_malformed_addresses_refused(bad):
    with pytest.raises(InvalidInputError, match="malformed"):
        run(simple(), recipients=bad)


@pytest.mark.parametrize(
    "bad",
    [
        [("Subject",)],
        ["Subject: x"],
        "Subject: x",
        [("Bad Name", "x")],
        [("Sub:ject", "x")],
        [(1, "x")],
        [("Subject", 5)],
    ],
)
def test_malformed_header_option(bad):
    with pytest.raises(InvalidInputError):
        run(simple(To="b@example.org"), header=bad)


def test_bare_local_part_is_qualified_like_tcllib():
    p = run(simple(), recipients="bob", originator="alice")
    assert p.recipients == (f"bob@{HOST}",)
    assert p.sender == f"alice@{HOST}"


def test_group_syntax_gives_its_members():
    p = run(simple(), recipients="friends: a@example.org, b@example.org;")
    assert p.recipients == ("a@example.org", "b@example.org")


def test_caller_message_is_never_modified():
    msg = simple(To="b@example.org", Bcc="hidden@example.org")
    multipart = EmailMessage()
    multipart["To"] = "b@example.org"
    multipart.make_mixed()
    multipart.attach(simple("part one"))
    before = (msg.as_bytes(), multipart.get_boundary())
    run(msg, header=[("To", "x@example.org"), ("Subject", "s")])
    run(multipart)
    assert msg.as_bytes() == before[0]
    assert msg["Bcc"] == "hidden@example.org"
    assert multipart.get_boundary() is None
    assert "Date" not in msg and "Message-ID" not in msg and "From" not in msg


def test_bytes_and_str_messages_keep_the_body_byte_for_byte():
    raw = b"From: a@example.com\nTo: b@example.org\nSubject: hi\n\n.line one\r\nline\rtwo\n"
    p = run(raw)
    assert body(p) == b".line one\r\nline\rtwo\n"
    assert p.sender == "a@example.com"
    q = run(raw.decode())
    assert body(q) == body(p)


def test_message_without_header_block():
    p = run(
        "just a body line\nand another\n", recipients="b@example.org", originator="a@example.com"
    )
    assert body(p) == b"just a body line\nand another\n"
    assert ("From", "a@example.com") in fields(p)


def test_folded_header_in_message_is_read_unfolded():
    raw = b"From: a@example.com\r\nTo: b@example.org,\r\n c@example.org\r\n\r\nbody\r\n"
    p = run(raw)
    assert p.recipients == ("b@example.org", "c@example.org")
    assert b"To: b@example.org,\r\n c@example.org\r\n" in p.data


def test_non_ascii_header_value_is_encoded():
    p = run(simple(To="b@example.org"), header=[("Subject", "Grüße")])
    assert p.data.split(b"\r\n\r\n")[0].isascii()
    parsed = email.message_from_bytes(p.data, policy=email.policy.default)
    assert parsed["Subject"] == "Grüße"


@pytest.mark.parametrize("bad", [42, None, 4.5])
def test_message_type_checked(bad):
    with pytest.raises(InvalidInputError, match="message must be"):
        run(bad, recipients="b@example.org")


def test_iterable_of_str_refused():
    with pytest.raises(InvalidInputError, match="produced str, not bytes"):
        run(["To: b@example.org\n", "\n", "body\n"])


# --- odd text in address fields: InvalidInputError, nothing else -----------------------

ADDRESS_FIELD_NAMES = [
    "From",
    "Sender",
    "To",
    "Cc",
    "Bcc",
    "Reply-To",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
]
ODD_TEXT = [
    "\x85<",  # what hypothesis found: U+0085 (NEL), then a lone "<"
    "\u2028<",
    "\u2029x@example.org",
    "<alice@",
    "Jö <alice@",
    "a" * 100 + " <alice@",
    '"unbalanced@example.org',
    "a@example.org (unclosed comment",
    "a@example.org)",
    "<<a@example.org>>",
    "a@[unclosed.example",
    ":;<",
    ">,.",
]


@pytest.mark.parametrize("name", ADDRESS_FIELD_NAMES)
@pytest.mark.parametrize("text", ODD_TEXT)
@pytest.mark.parametrize("recipients", [None, "r@example.org"])
def test_odd_text_in_an_address_field_of_the_header_option_is_invalid_input(name, text, recipients):
    with pytest.raises(InvalidInputError):
        run(b"To: b@example.org\r\nSubject: s\r\n\r\nbody", header=[(name, text)],
            recipients=recipients)  # fmt: skip


@pytest.mark.parametrize("name", ["Sender", "Reply-To", "To"])
def test_the_found_example_fails_before_any_connection(name):
    from servers import refused_port

    with refused_port() as port, pytest.raises(InvalidInputError):
        # Were anything opened, this would be a ConnectError.
        smtplug.sendmessage(
            "Subject: s\r\n\r\nbody\r\n",
            header=[(name, "\x85<")],
            recipients="r@example.org",
            servers="127.0.0.1",
            ports=port,
            usetls=False,
        )


# --- malformed addresses are refused, never rewritten -----------------------------------


@pytest.mark.parametrize("name", ADDRESS_FIELD_NAMES)
@pytest.mark.parametrize(
    "bad", ["<alice@", "alice@", "a@b@c", "foo bar", "x@y <z@w>", "@x.example"]
)
@pytest.mark.parametrize("recipients", [None, "r@example.org"])
def test_malformed_address_in_the_header_option_refused(name, bad, recipients):
    with pytest.raises(InvalidInputError, match=r"malformed|invalid|exactly one"):
        run(b"To: b@example.org\r\n\r\nbody", header=[(name, bad)], recipients=recipients)


@pytest.mark.parametrize("name", [*ADDRESS_FIELD_NAMES, "Dcc"])
@pytest.mark.parametrize("bad", ["<alice@", "alice@", "a@b@c", "foo bar", "x@y <z@w>"])
@pytest.mark.parametrize("recipients", [None, "r@example.org"])
def test_malformed_address_in_the_message_refused(name, bad, recipients):
    raw = f"From: a@example.com\r\nTo: b@example.org\r\n{name}: {bad}\r\n\r\nbody".encode()
    with pytest.raises(InvalidInputError, match=r"malformed|invalid|exactly one"):
        run(raw, recipients=recipients)


def test_malformed_address_in_a_message_object_refused():
    msg = simple(From="a@example.com", To="b@example.org")
    msg["Reply-To"] = "foo bar"  # the stdlib records a defect and keeps it
    with pytest.raises(InvalidInputError, match="malformed"):
        run(msg, recipients="r@example.org")


def test_malformed_to_with_recipients_is_not_sent(smtp_server):
    with pytest.raises(InvalidInputError, match="malformed"):
        smtplug.sendmessage(
            "Subject: s\r\n\r\nbody\r\n",
            header=[("To", "<alice@")],
            recipients="r@example.org",
            servers="127.0.0.1",
            ports=smtp_server.port,
            usetls=False,
            timeout=10,
        )
    assert smtp_server.sessions == [] and smtp_server.messages == []


@pytest.mark.parametrize("recipients", [None, "r@example.org"])
def test_valid_display_names_comments_and_groups_stay_accepted(recipients):
    header = [
        ("From", '"Alice, the Sender" <a@example.com> (comment)'),
        ("Sender", "Mail Robot <robot@example.com>"),
        ("Reply-To", "replies: one@example.org, Two <two@example.org>;"),
        ("To", 'friends: x@example.org, y@example.org;, "Q, Z" <z@example.org>'),
        ("Cc", "undisclosed-recipients:;"),
        ("Bcc", "=?utf-8?q?J=C3=B6?= <j@example.org>"),
    ]
    p = run(b"Subject: s\r\n\r\nbody", header=header, recipients=recipients)
    assert p.sender == "a@example.com"
    expected = ("x@example.org", "y@example.org", "z@example.org", "j@example.org")
    assert p.recipients == (("r@example.org",) if recipients else expected)
    for name, value in header[:-1]:
        assert f"{name}: {value}\r\n".encode() in p.header


def test_empty_recipient_fields_in_the_message_stay_accepted():
    p = run(b"From: a@example.com\r\nTo: b@example.org\r\nCc:\r\nBcc: \r\n\r\nbody")
    assert p.recipients == ("b@example.org",)


def test_sender_must_be_one_mailbox():
    with pytest.raises(InvalidInputError, match="exactly one"):
        run(simple(To="b@example.org"), header=[("Sender", "a@example.com, b@example.com")])


# --- non-ASCII addresses in an EmailMessage (default policy), as smtplib sends them ------


def international(**extra):
    msg = EmailMessage()  # email.policy.default
    msg["From"] = "Jürgen <jürgen@example.test>"
    msg["To"] = "Ånna <anna@exämple.test>, bob@example.test"
    msg["Subject"] = "Grüße"
    msg["Date"] = "Sat, 28 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = "<fixed@client.example.net>"
    for name, value in extra.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("hallo\n")
    return msg


def smtplib_sends(server, msg):
    """What CPython's smtplib.SMTP.send_message puts on the wire: (MAIL
    options, envelope, message)."""
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.send_message(msg)
    server.wait_idle()
    last = server.last
    return set(last.mail_options), (last.mail_from, last.rcpt_tos), last.content


def smtplug_sends(server, msg, **options):
    result = smtplug.sendmessage(
        msg, servers="127.0.0.1", ports=server.port, usetls=False, timeout=10, **options
    )
    assert result == [] and result.accepted
    server.wait_idle()
    last = server.last
    return set(last.mail_options), (last.mail_from, last.rcpt_tos), last.content


def test_non_ascii_addresses_in_an_email_message_sent_as_smtplib_sends_them(make_server):
    msg = international()
    before = msg.as_bytes()
    reference = smtplib_sends(make_server(), msg)
    ours = smtplug_sends(make_server(), msg)
    assert reference[1] == ("jürgen@example.test", ["anna@exämple.test", "bob@example.test"])
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= reference[0]
    assert ours[1] == reference[1]
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= ours[0]
    assert ours[2] == reference[2]  # the same header block, in UTF-8 (RFC 6532), the same body
    assert "From: Jürgen <jürgen@example.test>\r\n".encode() in ours[2]
    assert b"=?utf-8?" not in ours[2]
    assert msg.as_bytes() == before  # the caller's message is not changed


def test_non_ascii_display_names_with_ascii_addresses_stay_encoded_words(make_server):
    msg = international()
    msg.replace_header("From", "Jürgen <j@example.test>")
    msg.replace_header("To", "Ånna <anna@example.test>")
    reference = smtplib_sends(make_server(), msg)
    ours = smtplug_sends(make_server(), msg)
    assert ours[1] == reference[1] == ("j@example.test", ["anna@example.test"])
    assert ours[2] == reference[2]
    head = ours[2].split(b"\r\n\r\n")[0]
    assert head.isascii() and b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>" in head
    assert "SMTPUTF8" not in ours[0]
    assert not run(msg).smtputf8


def test_non_ascii_address_only_in_reply_to_needs_smtputf8():
    # smtplib would send the address as an encoded word, which RFC 2047 forbids.
    msg = international(Reply_To="Jörg <jörg@example.test>")
    msg.replace_header("From", "a@example.test")
    msg.replace_header("To", "b@example.test")
    p = run(msg)
    assert p.sender == "a@example.test" and p.recipients == ("b@example.test",)
    assert p.smtputf8
    assert "Reply-To: Jörg <jörg@example.test>\r\n".encode() in p.header


def test_non_ascii_email_message_without_smtputf8_is_not_sent(make_server):
    server = make_server(without_ehlo=["SMTPUTF8"])
    with pytest.raises(InvalidInputError, match="SMTPUTF8"):
        smtplug.sendmessage(
            international(), servers="127.0.0.1", ports=server.port, usetls=False, timeout=10
        )
    server.wait_idle()
    assert server.messages == []
    assert not any(c.upper().startswith("MAIL") for c in server.commands)
