"""Parity with Tcllib: Tcllib's smtp::sendmessage and smtplug.sendmessage, same inputs.

Each case sends one message with Tcllib (tclsh running tcllib_send.tcl) to one
RecordingServer and with smtplug to another server of the same configuration,
then compares what the two servers received: the envelope (MAIL FROM and the
ordered RCPT TO list), the command sequence, the transmitted header fields
that carry meaning (From, To, Cc, Sender, Subject, Resent-*; Date,
Message-ID, MIME-Version, Content-* values legitimately differ), the body as
dot-stuffed on the wire, and the refused recipients.

Where smtplug deliberately differs from Tcllib the tests assert the
difference itself, so a change on either side shows:

* Sender: Tcllib writes the From field's address; smtplug the originator's.
* Bcc: Tcllib sends Bcc recipients a separate "Blind Carbon Copy" digest in a
  second transaction; smtplug adds them to the one envelope and strips Bcc.
* Tcllib adds an empty "Bcc:" field when there is no To field; smtplug does not.
* A ``header`` option field: Tcllib appends it after the message's own field of
  that name; smtplug replaces the message's field.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servers import RecordingServer, SessionRecord, refused_port

SCRIPT = Path(__file__).with_name("tcllib_send.tcl")
TCL_TIMEOUT = 30


def _tcllib_missing() -> str | None:
    """Why Tcllib cannot be run here, or None when it can."""
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        return "tclsh is not installed (Debian: apt-get install tcl tcllib)"
    try:
        probe = subprocess.run(
            [tclsh],
            input="puts [package require smtp]\n",
            capture_output=True,
            text=True,
            timeout=TCL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tclsh cannot be run: {exc}"
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"Tcllib's smtp package is missing (apt-get install tcllib): {probe.stderr.strip()}"
    return None


_MISSING = _tcllib_missing()

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

#: Header fields whose values must match between the two (besides Resent-*).
COMPARED_FIELDS = frozenset({"from", "to", "cc", "sender", "subject"})
#: Fields whose values legitimately differ; only their presence is compared.
PRESENCE_ONLY = frozenset({"date", "message-id", "resent-date", "resent-message-id"})


# -- the two senders ---------------------------------------------------------------


@dataclass
class Case:
    """One set of sendmessage inputs, given to both implementations."""

    body: str = "This is the message."
    header: list[tuple[str, str]] = field(default_factory=list)
    originator: str | None = None
    recipients: str | None = None
    atleastone: bool = False
    queue: bool = False
    client: str = "localhost"
    #: the message's own header fields (besides MIME-Version and Content-Type)
    message_fields: list[tuple[str, str]] = field(default_factory=list)
    #: Content-Transfer-Encoding; None lets Tcllib's mime package choose
    encoding: str | None = None


@dataclass
class TclResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def refusals(self) -> list[tuple[str, int, str]]:
        out = []
        for line in self.stdout.splitlines():
            address, code, diagnostic = line.split("\t", 2)
            out.append((address, int(code), diagnostic))
        return out


def tcl_args(case: Case, port: int) -> list[str]:
    args = ["-port", str(port), "-body", case.body, "-client", case.client]
    if case.encoding is not None:
        args += ["-encoding", case.encoding]
    for name, value in case.message_fields:
        args += ["-mimeheader", name, value]
    for name, value in case.header:
        args += ["-header", name, value]
    if case.originator is not None:
        args += ["-originator", case.originator]
    if case.recipients is not None:
        args += ["-recipients", case.recipients]
    args += ["-atleastone", str(int(case.atleastone)), "-queue", str(int(case.queue))]
    return args


def run_tcllib_args(args: Sequence[str]) -> TclResult:
    tclsh = shutil.which("tclsh")
    assert tclsh is not None
    proc = subprocess.run(
        [tclsh, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=TCL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    return TclResult(proc.returncode, proc.stdout, proc.stderr)


def run_tcllib(server: RecordingServer, case: Case) -> TclResult:
    result = run_tcllib_args(tcl_args(case, server.port))
    server.wait_idle()  # Tcllib may hang up without waiting for the last replies
    return result


def smtplug_message(case: Case) -> bytes:
    """The message Tcllib's mime::initialize builds for the case, as bytes for smtplug."""
    lines = ["MIME-Version: 1.0", "Content-Type: text/plain"]
    if case.encoding is not None:
        lines.append(f"Content-Transfer-Encoding: {case.encoding}")
    lines += [f"{name}: {value}" for name, value in case.message_fields]
    head = "\r\n".join(lines) + "\r\n\r\n"
    body = re.sub(r"\r?\n", "\r\n", case.body)
    return (head + body).encode("utf-8")


def run_smtplug(server: RecordingServer, case: Case) -> list[tuple[str, int, str]]:
    # Imported here so that the Tcllib half of this module never depends on smtplug.
    import smtplug

    result = smtplug.sendmessage(
        smtplug_message(case),
        servers=["127.0.0.1"],
        ports=[server.port],
        client=case.client,
        usetls=False,
        header=list(case.header),
        originator=case.originator,
        recipients=case.recipients,
        atleastone=case.atleastone,
        queue=case.queue,
    )
    server.wait_idle()
    return result


# -- what a server saw ---------------------------------------------------------------

_PATH_ARG = re.compile(r"(FROM|TO):\s*<([^>]*)>", re.IGNORECASE)


def normalise_command(line: str) -> str:
    """The parts of a command both must agree on: MAIL/RCPT parameters (SIZE) dropped."""
    verb, _, rest = line.partition(" ")
    verb = verb.upper()
    if verb in ("EHLO", "HELO"):
        return f"{verb} {rest.strip()}"
    if verb in ("MAIL", "RCPT"):
        match = _PATH_ARG.match(rest.strip())
        if match:
            return f"{verb} {match.group(1).upper()}:<{match.group(2)}>"
    return line.strip() if verb not in ("DATA", "RSET", "QUIT", "QUED", "NOOP") else verb


def commands(server: RecordingServer) -> list[list[str]]:
    return [[normalise_command(c) for c in s.commands] for s in server.sessions]


def only_session(server: RecordingServer) -> SessionRecord:
    assert len(server.sessions) == 1, server.sessions
    return server.sessions[0]


def split_message(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Header fields (lower-cased name, unfolded value) and the body of a message."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no header/body separator in {data[:200]!r}"
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", head).decode("utf-8", "surrogateescape")
    fields: list[tuple[str, str]] = []
    for line in unfolded.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon and fields:
            # Tcllib's multipart Content-Type has a line that is just ";": keep
            # it with the field before, as a lenient reader would.
            last_name, last_value = fields.pop()
            fields.append((last_name, f"{last_value} {line.strip()}"))
            continue
        assert colon, f"not a header field: {line!r}"
        fields.append((name.strip().lower(), value.strip()))
    return fields, body


def compared(fields: list[tuple[str, str]]) -> collections.Counter[tuple[str, str]]:
    """The multiset of fields whose values must match."""
    return collections.Counter(
        (name, value)
        for name, value in fields
        if (name in COMPARED_FIELDS or name.startswith("resent-")) and name not in PRESENCE_ONLY
    )


def presence(fields: list[tuple[str, str]]) -> collections.Counter[str]:
    return collections.Counter(name for name, _ in fields if name in PRESENCE_ONLY)


def values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for n, value in fields if n == name]


def without(
    counter: collections.Counter[tuple[str, str]], *names: str
) -> dict[tuple[str, str], int]:
    return {key: n for key, n in counter.items() if key[0] not in names}


@dataclass
class Outcome:
    """What one implementation did, as seen by its server."""

    server: RecordingServer
    refusals: list[tuple[str, int]]

    @property
    def commands(self) -> list[list[str]]:
        return commands(self.server)

    @property
    def session(self) -> SessionRecord:
        return only_session(self.server)

    def envelope(self, index: int = 0) -> tuple[str, list[str]]:
        t = self.session.transactions[index]
        return t.mail_from, t.rcpt_tos + [r[0] for r in t.refused_rcpts]

    def fields(self, index: int = -1) -> list[tuple[str, str]]:
        return split_message(self.server.messages[index].content)[0]

    def wire_body(self, index: int = -1) -> bytes:
        return split_message(self.server.messages[index].data_wire)[1]


def both(
    make_server: Callable[..., RecordingServer], case: Case, **config: object
) -> tuple[Outcome, Outcome]:
    """Run Tcllib, then smtplug, each against a fresh server configured alike."""
    tcl_server = make_server(**config)
    tcl = run_tcllib(tcl_server, case)
    assert tcl.returncode == 0, f"Tcllib failed: {tcl.stderr}"
    tcl_outcome = Outcome(tcl_server, [(a, c) for a, c, _ in tcl.refusals])

    plug_server = make_server(**config)
    result = run_smtplug(plug_server, case)
    plug_outcome = Outcome(plug_server, [(a, c) for a, c, _ in result])
    return tcl_outcome, plug_outcome


def assert_same_message(
    tcl: Outcome, plug: Outcome, *, index: int = -1, ignore: Sequence[str] = ()
) -> None:
    tcl_fields, plug_fields = tcl.fields(index), plug.fields(index)
    assert without(compared(plug_fields), *ignore) == without(compared(tcl_fields), *ignore)
    assert presence(plug_fields) == presence(tcl_fields)
    assert plug.wire_body(index) == tcl.wire_body(index)


# -- the Tcllib half alone -------------------------------------------------------------


def test_tcllib_runs(smtp_server):
    case = Case(
        body="Hello from Tcllib.\n.dotted\n",
        encoding="7bit",
        header=[("From", "alice@example.com"), ("To", "bob@example.org"), ("Subject", "Hi")],
    )
    result = run_tcllib(smtp_server, case)
    assert result.returncode == 0, result.stderr
    assert result.refusals == []
    session = only_session(smtp_server)
    assert [normalise_command(c) for c in session.commands] == [
        "EHLO localhost",
        "MAIL FROM:<alice@example.com>",
        "RCPT TO:<bob@example.org>",
        "DATA",
        "QUIT",
    ]
    t = smtp_server.last
    assert t.mail_from == "alice@example.com" and t.rcpt_tos == ["bob@example.org"]
    fields, body = split_message(t.content)
    assert ("subject", "Hi") in fields and ("from", "alice@example.com") in fields
    assert body == b"Hello from Tcllib.\r\n.dotted\r\n"
    assert t.data_wire.endswith(b"\r\n..dotted\r\n.\r\n")


def test_tcllib_reports_refusals_on_stdout(make_server):
    server = make_server(refuse_rcpt={"bad@example.org": (550, "5.1.1 No such user")})
    result = run_tcllib(
        server,
        Case(header=[("From", "a@example.com"), ("To", "good@example.org, bad@example.org")]),
    )
    assert result.returncode == 0, result.stderr
    assert result.refusals == [("bad@example.org", 550, "5.1.1 No such user")]


def test_tcllib_error_exits_non_zero(make_server):
    server = make_server(mail_reply="553 5.7.1 Sender rejected")
    result = run_tcllib(server, Case(header=[("From", "a@example.com"), ("To", "b@example.org")]))
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR: ") and "553" in result.stderr
    # Tcllib's abort: RSET and QUIT sent without waiting for their replies.
    assert commands(server)[0][-2:] == ["RSET", "QUIT"]


def test_tcllib_connection_refused_exits_non_zero():
    with refused_port() as port:
        result = run_tcllib_args(["-port", str(port), "-recipients", "b@example.org"])
    assert result.returncode == 1 and result.stderr.startswith("ERROR: ")


def test_tcllib_bad_usage_exits_2():
    result = run_tcllib_args(["-body", "x"])
    assert result.returncode == 2 and "-port is required" in result.stderr


# -- parity ------------------------------------------------------------------------------


def test_a_manpage_example(make_server):
    # Tcllib's send_simple_message: Subject and -recipients only; the
    # originator (and From) comes from the login name.
    case = Case(
        header=[("Subject", "This is the subject.")],
        recipients="someone@somewhere.example",
    )
    tcl, plug = both(make_server, case)
    assert plug.refusals == tcl.refusals == []
    assert plug.envelope() == tcl.envelope()
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug, ignore=["from"])
    # Documented difference: the From field added for the login-name fallback
    # holds the qualified address (the one MAIL FROM uses); Tcllib writes the
    # bare login name there.
    login = tcl.envelope()[0].split("@")[0]
    assert values(tcl.fields(), "from") == [login]
    assert values(plug.fields(), "from") == [tcl.envelope()[0]]
    # Documented difference: Tcllib adds an empty Bcc field when there is no To.
    assert values(tcl.fields(), "bcc") == [""]
    assert values(plug.fields(), "bcc") == []


def test_b_from_to_cc_headers_give_the_recipients(make_server):
    case = Case(
        header=[
            ("From", "Alice <alice@example.com>"),
            ("To", "bob@example.org, Carol <carol@example.net>"),
            ("Cc", "dave@example.com"),
            ("Subject", "Parity b"),
        ]
    )
    tcl, plug = both(make_server, case)
    assert plug.refusals == tcl.refusals == []
    assert tcl.envelope() == (
        "alice@example.com",
        ["bob@example.org", "carol@example.net", "dave@example.com"],
    )
    assert plug.envelope() == tcl.envelope()
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug)


def test_c_originator_differs_from_from(make_server):
    case = Case(
        header=[("From", "Alice <alice@example.com>"), ("To", "bob@example.org")],
        originator="secretary@example.com",
    )
    tcl, plug = both(make_server, case)
    assert plug.envelope() == tcl.envelope() == ("secretary@example.com", ["bob@example.org"])
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug, ignore=["sender"])
    # Documented difference: Tcllib's Sender holds From's address, smtplug's
    # the originator's (the mailbox that actually sent the message).
    assert values(tcl.fields(), "sender") == ["alice@example.com"]
    assert values(plug.fields(), "sender") == ["secretary@example.com"]


@pytest.mark.parametrize("atleastone", [False, True], ids=["atleastone-false", "atleastone-true"])
def test_d_refused_recipient(make_server, atleastone):
    case = Case(
        header=[("From", "alice@example.com"), ("To", "good@example.org, bad@example.org")],
        atleastone=atleastone,
    )
    tcl, plug = both(
        make_server, case, refuse_rcpt={"bad@example.org": (550, "5.1.1 No such user")}
    )
    assert tcl.refusals == [("bad@example.org", 550)]
    assert plug.refusals == tcl.refusals
    assert plug.envelope() == tcl.envelope()
    assert plug.commands == tcl.commands
    if atleastone:
        assert tcl.commands[0][-2:] == ["DATA", "QUIT"]
        assert_same_message(tcl, plug)
    else:
        assert tcl.commands[0][-2:] == ["RSET", "QUIT"]
        assert tcl.server.messages == plug.server.messages == []


@pytest.mark.parametrize("xque", [True, False], ids=["XQUE", "no-XQUE"])
def test_e_queue(make_server, xque):
    case = Case(header=[("From", "alice@example.com"), ("To", "bob@example.org")], queue=True)
    tcl, plug = both(make_server, case, extra_ehlo=["XQUE"] if xque else [])
    assert ("QUED" in tcl.commands[0]) is xque
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug)


@pytest.mark.parametrize("final_newline", [True, False], ids=["final-newline", "no-final-newline"])
def test_f_dot_stuffing(make_server, final_newline):
    body = "first\n.hidden\n.\n..two\n. space\nlast"
    case = Case(
        body=body + ("\n" if final_newline else ""),
        encoding="7bit",  # without it Tcllib's mime quoted-printable-encodes "." lines
        header=[("From", "alice@example.com"), ("To", "bob@example.org")],
    )
    tcl, plug = both(make_server, case)
    expected = b"first\r\n..hidden\r\n..\r\n...two\r\n.. space\r\nlast\r\n.\r\n"
    assert tcl.wire_body() == expected
    assert plug.wire_body() == tcl.wire_body()
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug)


def test_g_resent_headers(make_server):
    case = Case(
        message_fields=[
            ("From", "original@example.com"),
            ("To", "first@example.org"),
            ("Subject", "Forwarded"),
        ],
        header=[("Resent-From", "forwarder@example.com"), ("Resent-To", "next@example.net")],
    )
    tcl, plug = both(make_server, case)
    assert tcl.envelope() == ("forwarder@example.com", ["next@example.net"])
    assert plug.envelope() == tcl.envelope()
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug)
    fields = tcl.fields()
    assert "resent-date" in dict(fields) and "resent-message-id" in dict(fields)


def test_h_bcc(make_server):
    case = Case(
        header=[
            ("From", "alice@example.com"),
            ("To", "bob@example.org"),
            ("Bcc", "hidden@example.net"),
            ("Subject", "With Bcc"),
        ],
    )
    tcl, plug = both(make_server, case)
    assert plug.refusals == tcl.refusals == []
    # Tcllib: the message to To, then a "Blind Carbon Copy" digest to Bcc.
    tcl_session = tcl.session
    assert [(t.mail_from, t.rcpt_tos) for t in tcl_session.transactions] == [
        ("alice@example.com", ["bob@example.org"]),
        ("alice@example.com", ["hidden@example.net"]),
    ]
    digest_fields = tcl.fields(1)
    assert values(digest_fields, "subject") == ["[Bcc] With Bcc"]
    assert values(digest_fields, "content-description") == ["Blind Carbon Copy"]
    assert b"With Bcc" in tcl.server.messages[1].content  # the original, inside
    # smtplug: one transaction, Bcc recipients in the envelope, no Bcc field.
    (plug_t,) = plug.session.transactions
    assert (plug_t.mail_from, plug_t.rcpt_tos) == (
        "alice@example.com",
        ["bob@example.org", "hidden@example.net"],
    )
    assert values(plug.fields(), "bcc") == []
    assert b"hidden@example.net" not in plug_t.content
    # The message to the visible recipients is the same.
    assert_same_message(tcl, plug, index=0)


def test_i_header_option_versus_message_fields(make_server):
    case = Case(
        message_fields=[("Subject", "Own subject")],
        header=[
            ("From", "alice@example.com"),
            ("To", "bob@example.org"),
            ("Subject", "Option subject"),
        ],
    )
    tcl, plug = both(make_server, case)
    assert plug.envelope() == tcl.envelope()
    assert plug.commands == tcl.commands
    assert_same_message(tcl, plug, ignore=["subject"])
    # Documented difference: Tcllib appends the option's field after the
    # message's own; smtplug replaces the message's field.
    assert values(tcl.fields(), "subject") == ["Own subject", "Option subject"]
    assert values(plug.fields(), "subject") == ["Option subject"]
