"""Issue 11: every outcome truthful under refusals, faults, threads and odd input.

Each test shows one promise smtplug broke once: a refused BDAT left the
transaction open, an error said "transient" where a retry could deliver twice,
a server's refusal was lost to the write error it caused, an unsolicited 421
was called a protocol violation, an observer's exception hid a delivery,
a Client shared by threads broke, and the SIZE limit was left to the server.
"""

from __future__ import annotations

from email.message import EmailMessage

import pytest

import smtplug
from smtplug import (
    ConnectError,
    ConnectionLostError,
    DeliveryUnknownError,
    ResponseError,
    TLSError,
)
from smtplug.testing import CLOSE, ScriptedServer

PIPE_CHUNK = ["PIPELINING", "CHUNKING", "8BITMIME"]


def message(subject: str = "trust", to: str = "bob@example.org") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("hello\n")
    return msg


def client(server: ScriptedServer, **options) -> smtplug.Client:
    options.setdefault("usetls", False)
    options.setdefault("timeout", 5)
    options.setdefault("client", "localhost")
    return smtplug.Client(servers="127.0.0.1", ports=server.port, **options)


def send(server: ScriptedServer, msg: object = None, **options):
    options.setdefault("usetls", False)
    options.setdefault("timeout", 5)
    options.setdefault("client", "localhost")
    return smtplug.sendmessage(
        message() if msg is None else msg, servers="127.0.0.1", ports=server.port, **options
    )


# -- a refused BDAT resets the transaction -------------------------------------


@pytest.mark.parametrize("capabilities", [PIPE_CHUNK, ["CHUNKING", "8BITMIME"]])
@pytest.mark.parametrize("atleastone", [False, True])
def test_a_refused_bdat_is_followed_by_rset_before_the_next_message(capabilities, atleastone):
    # One recipient refused: with PIPELINING, MAIL, RCPT and BDAT LAST go in one
    # write and the server refuses the BDAT. The transaction the accepted MAIL
    # opened must be reset before the kept session carries the next message.
    def refuse_in_first(command):
        first = len(command.session.transactions) == 1
        return b"554 5.5.1 no valid recipients\r\n" if first else None

    script = {("RCPT", 1): b"550 5.1.1 no such user\r\n", "BDAT": refuse_in_first}
    with ScriptedServer(script, capabilities=capabilities) as server:
        with client(server) as c:
            first = c.sendmessage(message("one"), atleastone=atleastone)
            second = c.sendmessage(message("two"))
        server.wait_idle()
    assert not first.accepted
    assert first == [("bob@example.org", 550, "5.1.1 no such user")]
    assert first.recipients == ()
    assert second.accepted
    verbs = server.sessions[0].verbs
    assert verbs.count("MAIL") == 2
    second_mail = [i for i, verb in enumerate(verbs) if verb == "MAIL"][1]
    assert "RSET" in verbs[:second_mail], verbs
    assert verbs[second_mail - 1] == "RSET", verbs


def test_result_recipients_are_empty_when_nothing_was_sent():
    script = {("RCPT", 2): b"550 5.1.1 no such user\r\n"}
    with ScriptedServer(script, capabilities=["PIPELINING", "8BITMIME"]) as server:
        result = send(server, message(to="bob@example.org, carol@example.org"))
        server.wait_idle()
    assert not result.accepted
    assert result.recipients == ()
    assert result == [("carol@example.org", 550, "5.1.1 no such user")]
    with ScriptedServer(script, capabilities=["PIPELINING", "8BITMIME"]) as server:
        result = send(server, message(to="bob@example.org, carol@example.org"), atleastone=True)
        server.wait_idle()
    assert result.accepted
    assert result.recipients == ("bob@example.org",)


def test_refused_recipients_are_typed_three_tuples():
    script = {
        ("RCPT", 1): b"550 5.1.1 no such user\r\n",
        ("RCPT", 2): b"450 4.2.0 try later\r\n",
        ("RCPT", 3): b"553 mailbox name not allowed\r\n",
    }
    to = "bob@example.org, carol@example.org, dave@example.org, erin@example.org"
    with ScriptedServer(script) as server:
        result = send(server, message(to=to), atleastone=True)
    bob, carol, dave = result
    assert bob == ("bob@example.org", 550, "5.1.1 no such user")
    address, code, diagnostic = carol
    assert (address, code, diagnostic) == ("carol@example.org", 450, "4.2.0 try later")
    assert (bob.address, bob.code, bob.enhanced, bob.transient) == (
        "bob@example.org",
        550,
        "5.1.1",
        False,
    )
    assert (carol.enhanced, carol.transient, carol.permanent) == ("4.2.0", True, False)
    assert (dave.enhanced, dave.transient, dave.permanent) == (None, False, True)
    assert len(bob) == 3
    assert result.recipients == ("erin@example.org",)


# -- retry decisions -----------------------------------------------------------


def test_delivery_unknown_is_not_transient():
    with ScriptedServer({".": CLOSE}) as server, pytest.raises(DeliveryUnknownError) as info:
        send(server)
    error = info.value
    assert error.code == 400
    assert error.may_have_been_delivered
    assert not error.transient
    assert not error.permanent


def test_not_sent_errors_say_they_were_not_delivered():
    script = {"MAIL": b"451 4.3.0 try later\r\n"}
    with ScriptedServer(script) as server, pytest.raises(ResponseError) as info:
        send(server)
    assert info.value.transient
    assert not info.value.may_have_been_delivered
    with ScriptedServer({"DATA": CLOSE}) as server, pytest.raises(ConnectionLostError) as lost:
        send(server)
    assert lost.value.transient
    assert not lost.value.may_have_been_delivered


@pytest.mark.parametrize(
    "error",
    [
        TLSError("bad certificate", certificate=True),
        TLSError("injected", attack=True),
        TLSError("no STARTTLS; the TLS policy says no", policy=True),
    ],
)
def test_tls_refusals_are_not_transient(error):
    assert error.code == 454
    assert not error.transient


def test_a_tls_policy_refusal_from_a_real_send_is_not_transient():
    # The server does not offer STARTTLS; the "require" policy refuses to go on.
    with ScriptedServer() as server, pytest.raises(ConnectError) as info:
        send(server, usetls=True, tlspolicy="require")
    (failure,) = info.value.failures
    assert isinstance(failure.error, TLSError) and failure.error.policy
    assert not failure.error.transient
    assert not info.value.transient


def test_connect_error_is_transient_when_any_server_may_work_later():
    with (
        ScriptedServer() as tls_less,
        ScriptedServer(greeting=b"421 busy\r\n") as busy,
        pytest.raises(ConnectError) as info,
    ):
        smtplug.sendmessage(
            message(),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[tls_less.port, busy.port],
            client="localhost",
            timeout=5,
            tlspolicy="require",
        )
    first, second = info.value.failures
    assert not first.error.transient and second.error.transient
    assert info.value.transient and not info.value.permanent
