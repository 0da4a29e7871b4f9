"""LMTP (RFC 2033) through the ``lmtp`` transport plugin: against aiosmtpd's
real LMTP server on loopback TCP and on a Unix socket, and against the
scripted server for the faults (mixed replies per recipient, a close after
the first of them, 421), with both APIs."""

from __future__ import annotations

import asyncio
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.lmtp import LMTP

import smtplug
from apis import both_apis
from smtplug import DeliveryUnknownError, InvalidInputError, ResponseError
from smtplug.interfaces import Dialect
from smtplug.testing import CLOSE, Answer, ScriptedServer
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis

A, B, C = "a@example.org", "b@example.org", "c@example.org"


def message(*recipients: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = ", ".join(recipients or (A, B))
    msg["Subject"] = "lmtp"
    msg.set_content("Delivered locally.\n")
    return msg


# -- aiosmtpd's LMTP server --------------------------------------------------------


class Handler:
    """Takes every message; answers after the dot per recipient, refusing
    those in ``refuse`` with the reply given."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.refuse = refuse or {}
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "\r\n".join(
            self.refuse.get(rcpt, f"250 2.0.0 <{rcpt}> delivered") for rcpt in envelope.rcpt_tos
        )


class _RecordingLMTP(LMTP):
    def __init__(self, handler: Handler, hellos: list[str], **options: Any) -> None:
        super().__init__(handler, **options)
        self._hellos = hellos

    async def smtp_LHLO(self, arg: str) -> None:
        self._hellos.append(arg)
        await super().smtp_LHLO(arg)


class LMTPServer:
    """aiosmtpd's LMTP on its own loop in a thread: loopback TCP (a port the
    OS picks) or the Unix socket ``path``."""

    def __init__(self, handler: Handler, path: Path | None = None) -> None:
        self.handler = handler
        self.path = path
        self.hellos: list[str] = []  # the client name of each LHLO
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def _protocol(self) -> LMTP:
        return _RecordingLMTP(self.handler, self.hellos, loop=self._loop)

    def __enter__(self) -> LMTPServer:
        self._thread.start()
        if self.path is None:
            opening = self._loop.create_server(self._protocol, "127.0.0.1", 0)
        else:
            opening = self._loop.create_unix_server(self._protocol, str(self.path))
        self._server = asyncio.run_coroutine_threadsafe(opening, self._loop).result(10)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def __exit__(self, *exc_info: object) -> None:
        server = self._server
        assert server is not None

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_tcp_every_recipient_delivered():
    handler = Handler()
    with LMTPServer(handler) as server:
        result = smtplug.sendmessage(
            message(A, B), servers="127.0.0.1", ports=server.port, transport="lmtp", usetls=False
        )
    assert result == []
    assert result.accepted
    assert result.recipients == (A, B)
    assert result.reply is not None and result.reply.code == 250
    ((sender, rcpts, content),) = handler.received
    assert (sender, rcpts) == ("sender@example.com", [A, B])
    assert content.endswith(b"Delivered locally.\r\n")


def test_tcp_one_recipient_refused_after_the_dot():
    handler = Handler({B: "550 5.1.1 <b@example.org> no such mailbox"})
    with LMTPServer(handler) as server:
        result = smtplug.sendmessage(
            message(A, B, C),
            servers="127.0.0.1",
            ports=server.port,
            transport="lmtp",
            usetls=False,
        )
    assert result.accepted
    assert result == [(B, 550, "5.1.1 <b@example.org> no such mailbox")]
    assert result[0].permanent
    assert result.recipients == (A, C)


@pytest.mark.parametrize("prefix", ["", "unix:"])
def test_unix_socket(tmp_path, prefix):
    path = tmp_path / "lmtp.sock"
    handler = Handler({A: "452 4.2.2 <a@example.org> mailbox full"})
    with LMTPServer(handler, path) as server:
        result = smtplug.sendmessage(
            message(A, B), servers=f"{prefix}{path}", transport="lmtp", usetls=False
        )
    assert len(server.hellos) == 1
    assert result.accepted
    assert result == [(A, 452, "4.2.2 <a@example.org> mailbox full")]
    assert result[0].transient
    assert result.recipients == (B,)
    assert result.server == f"{prefix}{path}"


def test_every_recipient_refused_after_the_dot_is_a_refused_message():
    handler = Handler({A: "552 5.2.2 over quota", B: "452 4.2.2 full"})
    with LMTPServer(handler) as server, pytest.raises(ResponseError) as caught:
        smtplug.sendmessage(
            message(A, B), servers="127.0.0.1", ports=server.port, transport="lmtp", usetls=False
        )
    error = caught.value
    assert error.code == 552
    assert error.command == 'the final "."'
    assert list(error.refused) == [(A, 552, "5.2.2 over quota"), (B, 452, "4.2.2 full")]
    assert "every recipient was refused" in error.diagnostic


def test_a_single_recipient_refused_after_the_dot_is_the_smtp_error():
    handler = Handler({A: "550 5.1.1 no such mailbox"})
    with LMTPServer(handler) as server, pytest.raises(ResponseError) as caught:
        smtplug.sendmessage(
            message(A), servers="127.0.0.1", ports=server.port, transport="lmtp", usetls=False
        )
    assert (caught.value.code, caught.value.diagnostic) == (550, "5.1.1 no such mailbox")


def test_a_client_sends_twice_over_one_lmtp_session():
    handler = Handler({B: "550 5.1.1 no"})
    with (
        LMTPServer(handler) as server,
        smtplug.Client(
            servers="127.0.0.1", ports=server.port, transport="lmtp", usetls=False
        ) as client,
    ):
        first = client.sendmessage(message(A, B))
        second = client.sendmessage(message(C))
    assert (first.recipients, list(first)) == ((A,), [(B, 550, "5.1.1 no")])
    assert (second.recipients, list(second)) == ((C,), [])
    assert [rcpts for _, rcpts, _ in handler.received] == [[A, B], [C]]
    assert len(server.hellos) == 1


# -- the scripted server: the wire, and faults -------------------------------------


def lhlo(*keywords: str) -> bytes:
    lines = ["lmtp.test", *keywords]
    return b"".join(
        f"250{' ' if i == len(lines) - 1 else '-'}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


def send_scripted(server: ScriptedServer, *recipients: str, **options: Any) -> Any:
    return smtplug.sendmessage(
        message(*recipients),
        servers="127.0.0.1",
        ports=server.port,
        transport="lmtp",
        usetls=False,
        **options,
    )


@pytest.mark.parametrize(
    "keywords",
    [(), ("PIPELINING",), ("CHUNKING",), ("PIPELINING", "CHUNKING")],
    ids=["plain", "pipelining", "chunking", "pipelining-chunking"],
)
@pytest.mark.parametrize("atleastone", [False, True])
def test_mixed_replies_per_recipient(keywords, atleastone):
    script = {
        "LHLO": lhlo("8BITMIME", *keywords),
        ".": b"250 2.0.0 a ok\r\n452 4.2.2 b full\r\n250 2.0.0 c ok\r\n",
    }
    with ScriptedServer(script) as server:
        result = send_scripted(server, A, B, C, atleastone=atleastone)
        server.wait_idle()
    assert result.accepted
    assert result == [(B, 452, "4.2.2 b full")]
    assert result.recipients == (A, C)
    assert result.reply is not None and result.reply.diagnostic == "2.0.0 a ok"
    (session,) = server.sessions
    end = "BDAT" if "CHUNKING" in keywords else "DATA"
    assert session.verbs[:5] == ["LHLO", "MAIL", "RCPT", "RCPT", "RCPT"]
    assert end in session.verbs
    assert "EHLO" not in session.verbs and "HELO" not in session.verbs
    assert session.verbs[-1] == "QUIT"
    assert session.transactions[0].content.endswith(b"Delivered locally.\r\n")


def test_refused_at_rcpt_and_after_the_dot_are_both_in_the_list():
    script = {
        "LHLO": lhlo("PIPELINING"),
        ("RCPT", 2): b"550 5.1.1 no b here\r\n",
        # One reply per recipient accepted at RCPT: a's, then c's.
        ".": b"250 2.0.0 a ok\r\n554 5.7.1 c rejected\r\n",
    }
    with ScriptedServer(script) as server:
        result = send_scripted(server, A, B, C, atleastone=True)
    assert result.accepted
    assert result == [(B, 550, "5.1.1 no b here"), (C, 554, "5.7.1 c rejected")]
    assert result.recipients == (A,)


def test_lhlo_refused_is_not_followed_by_helo():
    script = {"LHLO": b"500 5.5.1 what?\r\n"}
    with ScriptedServer(script) as server, pytest.raises(smtplug.ConnectError) as caught:
        send_scripted(server, A)
    server.wait_idle()
    assert "500" in str(caught.value)
    assert server.sessions[0].verbs[:1] == ["LHLO"]
    assert "HELO" not in server.sessions[0].verbs


@pytest.mark.parametrize("keywords", [(), ("PIPELINING", "CHUNKING")], ids=["data", "bdat"])
def test_closed_after_the_first_reply_delivery_unknown_for_the_rest(keywords):
    script = {
        "LHLO": lhlo(*keywords),
        ".": Answer(b"250 2.0.0 a ok\r\n", then=CLOSE),
    }
    with ScriptedServer(script) as server, pytest.raises(DeliveryUnknownError) as caught:
        send_scripted(server, A, B, C)
    error = caught.value
    assert error.may_have_been_delivered
    assert error.delivered == (A,)
    assert error.unknown == (B, C)
    assert list(error.refused) == []
    assert f"delivered to {A}" in error.diagnostic
    assert f"{B}, {C}" in error.diagnostic


def test_closed_before_any_reply_is_delivery_unknown():
    script = {"LHLO": lhlo(), ".": CLOSE}
    with ScriptedServer(script) as server, pytest.raises(DeliveryUnknownError):
        send_scripted(server, A, B)


def test_421_for_the_last_recipient_ends_the_session():
    script = {
        "LHLO": lhlo(),
        ".": Answer(b"250 2.0.0 a ok\r\n421 4.3.2 shutting down\r\n", then=CLOSE),
    }
    with (
        ScriptedServer(script) as server,
        smtplug.Client(
            servers="127.0.0.1", ports=server.port, transport="lmtp", usetls=False
        ) as client,
    ):
        result = client.sendmessage(message(A, B))
        assert result.accepted
        assert result == [(B, 421, "4.3.2 shutting down")]
        assert result.recipients == (A,)
        assert not client.connected  # the server is closing: not kept
        again = client.sendmessage(message(C))
    assert again.accepted and again.recipients == (C,)
    assert server.connections == 2


def test_421_before_the_last_reply_leaves_the_rest_unknown():
    script = {
        "LHLO": lhlo(),
        ".": Answer(b"250 2.0.0 a ok\r\n421 4.3.2 shutting down\r\n", then=CLOSE),
    }
    with ScriptedServer(script) as server, pytest.raises(DeliveryUnknownError) as caught:
        send_scripted(server, A, B, C)
    error = caught.value
    assert (error.delivered, error.unknown) == ((A,), (C,))
    assert list(error.refused) == [(B, 421, "4.3.2 shutting down")]


def test_421_at_data_before_the_end_fails_over_as_smtp_does():
    script = {"LHLO": lhlo(), "DATA": Answer(b"421 4.3.2 going down\r\n", then=CLOSE)}
    with (
        ScriptedServer(script) as first,
        ScriptedServer({"LHLO": lhlo(), ".": b"250 2.0.0 a ok\r\n250 2.0.0 b ok\r\n"}) as second,
    ):
        result = smtplug.sendmessage(
            message(A, B),
            servers=["127.0.0.1", "127.0.0.1"],
            ports=[first.port, second.port],
            transport="lmtp",
            usetls=False,
        )
    assert result.accepted and result.recipients == (A, B)
    assert result.port == second.port


def test_starttls_over_tcp(tmp_path):
    certs = tls_ca()
    cafile = write_files(certs, tmp_path).cafile
    script = {
        # STARTTLS offered before TLS only; LHLO again after the handshake.
        "LHLO": lambda command: lhlo() if command.tls else lhlo("STARTTLS"),
        ".": b"250 2.0.0 a ok\r\n250 2.0.0 b ok\r\n",
    }
    with ScriptedServer(script, tls_context=server_context(certs.server, tmp_path)) as server:
        result = smtplug.sendmessage(
            message(A, B),
            servers="127.0.0.1",
            ports=server.port,
            transport="lmtp",
            cafile=cafile,
            tlspolicy="require",
        )
        server.wait_idle()
    assert result.accepted and result.recipients == (A, B)
    assert result.tls is not None and result.tls.verified
    assert server.sessions[0].verbs[:3] == ["LHLO", "STARTTLS", "LHLO"]


# -- options and the extension point -----------------------------------------------


@pytest.mark.parametrize(
    "server", ["unix:relative/lmtp", "unix:", "/run/lmtp\x00x", "/" + "x" * 200]
)
def test_a_malformed_socket_path_fails_before_connecting(server):
    with pytest.raises(InvalidInputError):
        smtplug.sendmessage(message(A), servers=server, transport="lmtp", usetls=False)


def test_a_socket_path_needs_the_lmtp_transport():
    with pytest.raises(InvalidInputError, match="invalid server name"):
        smtplug.sendmessage(message(A), servers="/run/lmtp", usetls=False)


def test_transport_and_tlsimport_conflict():
    with pytest.raises(InvalidInputError, match="tlsimport"):
        smtplug.sendmessage(message(A), transport="lmtp", tlsimport=True)


def test_an_unknown_transport_is_named():
    with pytest.raises(InvalidInputError, match="'nosuch'"):
        smtplug.sendmessage(message(A), transport="nosuch")


def test_no_socket_there_is_a_connect_error(tmp_path):
    with pytest.raises(smtplug.ConnectError, match=r"lmtp\.sock"):
        smtplug.sendmessage(
            message(A), servers=str(tmp_path / "lmtp.sock"), transport="lmtp", usetls=False
        )


class EchoDialectTransport:
    """A third party's protocol variant, declared only through the interfaces:
    a hello verb of its own and replies per recipient, over the plain stream."""

    name = "x-variant"
    dialect = Dialect(name="X", hello="XHLO", fallback_hello=None, replies_per_recipient=True)

    def connect(self, host, port, *, timeout, options):
        from smtplug_plugins.plain import PlainTransport

        return PlainTransport().connect(host, port, timeout=timeout, options=options)


class AsyncEchoDialectTransport:
    name = "x-variant"
    dialect = EchoDialectTransport.dialect

    async def connect(self, host, port, *, timeout, options):
        from smtplug_plugins.plain import AsyncPlainTransport

        return await AsyncPlainTransport().connect(host, port, timeout=timeout, options=options)


class VariantPlugin:
    @smtplug.hookimpl
    def smtplug_register_transports(self):
        return [EchoDialectTransport()]

    @smtplug.hookimpl
    def smtplug_register_async_transports(self):
        return [AsyncEchoDialectTransport()]


def test_a_plugin_outside_the_package_declares_its_dialect():
    script = {"XHLO": lhlo(), ".": b"550 5.1.1 a no\r\n250 2.0.0 b ok\r\n"}
    with ScriptedServer(script) as server:
        result = smtplug.sendmessage(
            message(A, B),
            servers="127.0.0.1",
            ports=server.port,
            transport="x-variant",
            usetls=False,
            plugins=[VariantPlugin()],
        )
        server.wait_idle()
    assert result == [(A, 550, "5.1.1 a no")]
    assert result.recipients == (B,)
    assert server.sessions[0].verbs[0] == "XHLO"


def test_a_dialect_checks_its_verbs():
    with pytest.raises(smtplug.PluginError, match="verb"):
        Dialect(hello="EH LO")


def test_smtp_is_unchanged_by_the_dialect():
    """The SMTP transports still say EHLO and read one reply after the dot."""
    with ScriptedServer({".": b"250 2.0.0 queued\r\n"}) as server:
        result = smtplug.sendmessage(
            message(A, B), servers="127.0.0.1", ports=server.port, usetls=False
        )
        server.wait_idle()
    assert result.accepted and result.recipients == (A, B)
    assert server.sessions[0].verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", ".", "QUIT"]


def test_the_example_in_docs_lmtp_runs():
    text = (Path(__file__).parent.parent / "docs" / "lmtp.md").read_text()
    blocks = text.split("<!-- run -->\n```python\n")[1:]
    assert blocks, "docs/lmtp.md has no runnable example"
    for block in blocks:
        exec(compile(block.split("\n```", 1)[0], "docs/lmtp.md", "exec"), {})
