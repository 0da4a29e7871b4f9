"""An in-process SMTP server that records exactly what a client sends.

``RecordingServer`` runs aiosmtpd's ``SMTP`` protocol on its own event loop in
a daemon thread, listening on 127.0.0.1 with a port the OS picks. For every
connection it keeps a :class:`SessionRecord`:

* ``wire``: every byte the client sent, as it came off the socket (captured in
  ``data_received``, before aiosmtpd parses or un-dot-stuffs anything);
* ``commands``: each command line as received, without its CRLF (message
  content lines are not commands);
* ``transactions``: one :class:`Transaction` per accepted ``MAIL`` command,
  with the raw DATA bytes (``data_wire``, dot-stuffing and the final ".\\r\\n"
  intact) and the decoded message (``content``);
* ``helo_name``: the name given in the last HELO or EHLO command.

Behaviour is configured with keyword arguments (all optional)::

    RecordingServer(
        extra_ehlo=["XQUE"],                        # more EHLO keywords
        refuse_rcpt={"bad@example.org": (550, "5.1.1 No such user"),
                     "@refused.example": (550, "5.7.1 Relay denied")},
        greeting="421 4.3.2 Service not available",  # sent, then the server hangs up
        ehlo_reply="502 5.5.1 EHLO not implemented",
        helo_reply="554 no",
        mail_reply="553 5.7.1 Sender rejected",
        data_final_reply="554 5.7.1 rejected",
        close_after_data=True,                       # hang up after the final "."
        stall_after_data=True,                       # never answer the final "."
        tls_context=ssl_ctx,                         # offer STARTTLS with this context
        require_starttls=True,                       # refuse mail before STARTTLS
        implicit_tls=ssl_ctx,                        # TLS from the first byte
        starttls_reply="454 4.7.0 TLS not available",  # answer STARTTLS with this
        inject_after_starttls=b"250 injected\r\n",  # bytes right after the 220
        plain_only_ehlo=["XQUE"],                    # keywords offered only before TLS
        auth_users={"alice": "wonderland"},          # offer AUTH, accept these logins
        auth_mechanisms=["PLAIN", "SCRAM-SHA-256"],  # ... with only these mechanisms
        auth_require_tls=True,                       # ... and only after STARTTLS
        scram_bad_server_signature=True,             # a SCRAM server that cannot prove itself
        refuse_auth=["SCRAM-SHA-256"],               # mechanisms that answer 535 to anyone
        chunking=True,                               # offer CHUNKING and take BDAT
        discard_data=True,                           # BDAT content counted, not kept,
                                                     # and only the wire's first 64 KiB
        accept_data_without_rcpt=True,               # 354 to DATA even with no recipient
        mail_421_once=True,                          # the first MAIL gets 421 and a hang-up
        without_ehlo=["8BITMIME"],                   # keywords aiosmtpd offers, withheld
    )

Call :meth:`RecordingServer.drop_connections` to close every client
connection from the server side (as an idle timeout does).

``QUED`` and ``ONEX`` (Tcllib's XQUE/ONEX extensions) are answered "250 OK".
The null reverse-path (``MAIL FROM:<>``), which aiosmtpd refuses on its own,
is accepted and recorded as ``mail_from == ""``.

Synchronisation: everything a client sent before it read a reply is recorded
before that reply is written, so once the client has its last reply the
records are complete. A client that sends commands without waiting for the
replies (Tcllib's ``RSET``/``QUIT`` after an error) and hangs up should be
followed by :meth:`RecordingServer.wait_idle`, which returns once every
session seen so far has ended.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, AnyStr

import scramp
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = [
    "RecordingServer",
    "SessionRecord",
    "Transaction",
    "canonical",
    "refused_port",
]

HOST = "127.0.0.1"
SERVER_NAME = "recorder.test"
_DEFAULT_SIZE_LIMIT = 33554432
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclass
class Transaction:
    """One mail transaction: an accepted MAIL, its RCPTs and (maybe) DATA."""

    mail_from: str
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)  # accepted recipients only
    rcpt_options: list[str] = field(default_factory=list)
    refused_rcpts: list[tuple[str, int, str]] = field(default_factory=list)
    data_wire: bytes = b""  # after the 354, up to and including ".\r\n"
    content: bytes = b""  # as aiosmtpd decoded it: un-dot-stuffed, no terminator
    data_reply: str | None = None  # the reply to the final ".", None if none was sent
    bdat_sizes: list[int] = field(default_factory=list)  # each BDAT chunk's size
    octets: int = 0  # octets of message content received (also when discarded)
    reset: bool = False  # ended by RSET, a new HELO/EHLO or MAIL refusal state

    @property
    def delivered(self) -> bool:
        """True when the message was received and accepted with a 2xx reply."""
        return self.data_reply is not None and self.data_reply.startswith("2")


@dataclass
class SessionRecord:
    """What one client connection sent."""

    peer: Any = None
    raw: bytearray = field(default_factory=bytearray, repr=False)
    commands: list[str] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    helo_name: str | None = None
    #: for each EHLO/HELO, whether the connection was encrypted at that moment
    hello_tls: list[bool] = field(default_factory=list)
    #: the client certificate (``getpeercert()`` form) seen over TLS, if any
    client_cert: dict[str, Any] | None = None
    #: (mechanism, user) of a successful AUTH
    authenticated: tuple[str, str] | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def wire(self) -> bytes:
        """Every byte the client sent on this connection, as received."""
        return bytes(self.raw)

    @property
    def current(self) -> Transaction | None:
        """The open transaction (the last one, unless it has ended)."""
        if self.transactions:
            last = self.transactions[-1]
            if not last.reset and last.data_reply is None and not last.data_wire:
                return last
        return None


class _NullPath(str):
    """The null reverse-path: equal to "" but truthy, for aiosmtpd's checks."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True


_NULL_PATH = _NullPath("")
_MAIL_NULL = re.compile(r"FROM:\s*<>(.*)\Z", re.IGNORECASE | re.DOTALL)


_PATH_ARGUMENT = re.compile(r"(FROM|TO)(:\s*<[^>]*>)(.*)\Z", re.IGNORECASE | re.DOTALL)


def canonical(command: str) -> str:
    """``command`` (a recorded line) with what SMTP reads case-insensitively in
    upper case: the verb, MAIL's ``FROM:`` and RCPT's ``TO:``, and ESMTP
    parameter keywords (``size=62`` -> ``SIZE=62``). Addresses and parameter
    values stay as sent (a local part may be case-sensitive).

    Clients differ in case (CPython 3.13's smtplib writes ``mail from:``, 3.12
    ``mail FROM:``); compare ``canonical`` lines to check what was sent, not how.
    """
    verb, space, rest = command.partition(" ")
    verb = verb.upper()
    if verb in ("MAIL", "RCPT") and (match := _PATH_ARGUMENT.match(rest)):
        keyword, path, params = match.groups()
        words = [
            f"{key.upper()}{eq}{value}"
            for key, eq, value in (word.partition("=") for word in params.split())
        ]
        rest = " ".join([keyword.upper() + path, *words])
    return verb + space + rest


class _ReaderTap:
    """Wraps the protocol's StreamReader to record command lines and DATA bytes."""

    def __init__(self, reader: asyncio.StreamReader, protocol: _RecordingSMTP) -> None:
        self._reader = reader
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        line = await self._reader.readuntil(separator)
        self._protocol._consumed(line)
        return line

    async def read(self, n: int = -1) -> bytes:
        chunk = await self._reader.read(n)
        self._protocol._consumed(chunk)
        return chunk


#: With ``discard_data``, how much of a session's wire is still recorded.
_DISCARD_KEEP = 65536


class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, recording into a SessionRecord."""

    def __init__(self, owner: RecordingServer, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self.record = SessionRecord()
        self._in_data = False
        self._data_buffer = bytearray()
        size_limit = owner._size_limit
        super().__init__(
            _Handler(owner),
            hostname=SERVER_NAME,
            loop=loop,
            data_size_limit=size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=60,
            tls_context=owner.tls_context,
            require_starttls=owner.require_starttls,
            auth_require_tls=owner.auth_require_tls,
            auth_exclude_mechanism=[
                m for m in AUTH_MECHANISMS if m not in owner.offered_auth_mechanisms
            ],
            authenticator=self._check_login,
        )
        # aiosmtpd keeps these limits on the class and grows them on every
        # EHLO; give each session its own copy so servers cannot disturb each other.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)

    # -- raw capture --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again, with the TLS transport, after a STARTTLS handshake:
        # still the same session.
        if self.record.peer is None:
            self.record.peer = transport.get_extra_info("peername")
            self._owner._session_started(self)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._owner.discard_data:
            self.record.raw += data
        elif len(self.record.raw) < _DISCARD_KEEP:  # keep only the start of the wire
            self.record.raw += data[: _DISCARD_KEEP - len(self.record.raw)]
        super().data_received(data)

    def eof_received(self) -> bool | None:
        # aiosmtpd cancels its command loop on EOF, which can drop lines the
        # client sent just before hanging up; record those as commands here.
        self._record_leftover()
        return super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        self._record_leftover()
        try:
            super().connection_lost(error)
        finally:
            self.record.ended.set()
            self._owner._session_ended(self)

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super()._cb_client_connected(reader, writer)
        self._reader = _ReaderTap(reader, self)  # type: ignore[assignment]

    def _consumed(self, chunk: bytes) -> None:
        """Bytes the command loop has just read from the stream."""
        if self._in_data:
            self._data_buffer += chunk
        elif chunk:
            self.record.commands.append(chunk.rstrip(b"\r\n").decode("utf-8", "surrogateescape"))

    def _record_leftover(self) -> None:
        if self._in_data:
            return
        reader = getattr(self, "_reader", None)
        buffer = getattr(reader, "_buffer", None)
        if not buffer:
            return
        data = bytes(buffer)
        buffer.clear()
        for line in data.split(b"\n"):
            if line.rstrip(b"\r"):
                self.record.commands.append(line.rstrip(b"\r").decode("utf-8", "surrogateescape"))

    # -- AUTH (PLAIN, LOGIN: aiosmtpd's own exchanges) -----------------------

    def _check_login(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        expected = (self._owner.auth_users or {}).get(user)
        if expected is None or not hmac.compare_digest(expected, password):
            return AuthResult(success=False, handled=False)
        if mechanism in self._owner.refuse_auth:
            return AuthResult(success=False, handled=False)
        self.record.authenticated = (mechanism, user)
        return AuthResult(success=True, auth_data=data)

    # -- TLS ----------------------------------------------------------------

    def note_tls(self) -> None:
        """Record whether this hello came over TLS, and any client certificate."""
        assert self.transport is not None
        ssl_object = self.transport.get_extra_info("ssl_object")
        self.record.hello_tls.append(ssl_object is not None)
        if ssl_object is not None:
            self.record.client_cert = ssl_object.getpeercert() or None

    async def smtp_STARTTLS(self, arg: str) -> None:
        owner = self._owner
        if owner.starttls_reply is not None:
            await self.push(owner.starttls_reply)
            return
        if owner.inject_after_starttls is not None:
            # A man in the middle's trick: more bytes right behind the 220, in
            # the same segment, for the client to mistake for TLS-protected replies.
            assert self.transport is not None
            self.transport.write(b"220 2.0.0 Ready to start TLS\r\n" + owner.inject_after_starttls)
            return
        await super().smtp_STARTTLS(arg)

    # -- greeting -----------------------------------------------------------

    async def _handle_client(self) -> None:
        greeting = self._owner.greeting
        if greeting is not None and not greeting.startswith("2"):
            await self.push(greeting)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    _greeted = False

    async def push(self, status: AnyStr) -> None:
        if not self._greeted:
            self._greeted = True
            if self._owner.greeting is not None:
                await super().push(self._owner.greeting)
                return
        await super().push(status)

    # -- commands -----------------------------------------------------------

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._owner.mail_421_once:
            self._owner.mail_421_once = False
            await self.push("421 4.4.2 recorder.test closing: idle for too long")
            assert self.transport is not None
            self.transport.close()
            return
        match = _MAIL_NULL.match(arg.strip()) if arg else None
        if match is None:
            await super().smtp_MAIL(arg)
            return
        # aiosmtpd refuses "MAIL FROM:<>"; a real server must accept it.
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if self.envelope.mail_from:
            await self.push("503 Error: nested MAIL command")
            return
        options = match.group(1).upper().split()
        status = await self._call_handler_hook("MAIL", _NULL_PATH, options)
        await self.push(status)

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._data_buffer = bytearray()
        try:
            assert self.envelope is not None
            if self._owner.accept_data_without_rcpt and not self.envelope.rcpt_tos:
                # What RFC 2920 says a server should not do: 354 with no recipient.
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                while (await self._reader.readuntil(b"\n")) not in (b".\r\n", b""):
                    pass
                self._set_post_data_state()
                await self.push("554 5.5.1 Error: no valid recipients")
                return
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    _bdat: bytearray | None = None

    async def smtp_BDAT(self, arg: str) -> None:
        """CHUNKING (RFC 3030), which aiosmtpd lacks: ``BDAT size [LAST]``."""
        owner = self._owner
        words = (arg or "").split()
        if not owner.chunking:
            await self.push('500 Error: command "BDAT" not recognized')
            return
        if not (
            1 <= len(words) <= 2
            and words[0].isdigit()
            and (len(words) == 1 or words[1].upper() == "LAST")
        ):
            await self.push("501 Syntax: BDAT size [LAST]")
            return
        size, last = int(words[0]), len(words) == 2
        chunk = await self._reader.readexactly(size)
        transaction = self.record.current
        if self.envelope is None or not self.envelope.rcpt_tos or transaction is None:
            self._bdat = None
            await self.push("503 5.5.1 Error: need MAIL and RCPT before BDAT")
            return
        if self._bdat is None:
            self._bdat = bytearray()
        transaction.bdat_sizes.append(size)
        transaction.octets += size
        if not owner.discard_data:
            self._bdat += chunk
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        transaction.content = bytes(self._bdat)
        self._bdat = None
        reply = owner.data_final_reply or "250 2.0.0 OK: queued"
        transaction.data_reply = reply
        self._set_post_data_state()
        await self.push(reply)

    async def smtp_QUED(self, arg: str) -> None:
        await self.push("250 OK")

    async def smtp_ONEX(self, arg: str) -> None:
        await self.push("250 OK")

    def _data_wire(self) -> bytes:
        return bytes(self._data_buffer)


#: Every SASL mechanism a RecordingServer can offer (with ``auth_users``).
AUTH_MECHANISMS = (
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SCRAM-SHA-256-PLUS",
    "XOAUTH2",
    "X-TEST",
)
#: What ``auth_users`` offers unless ``auth_mechanisms`` says otherwise.
DEFAULT_AUTH_MECHANISMS = tuple(m for m in AUTH_MECHANISMS if m != "X-TEST")


class _Handler:
    """aiosmtpd handler hooks applying a RecordingServer's configuration.

    The SASL server side here is independent of smtplug's client: PLAIN and
    LOGIN are aiosmtpd's, CRAM-MD5 is computed with :mod:`hmac`, SCRAM is
    scramp's server.
    """

    def __init__(self, owner: RecordingServer) -> None:
        self._owner = owner

    # -- AUTH -------------------------------------------------------------------

    def _password(self, user: str) -> str | None:
        return (self._owner.auth_users or {}).get(user)

    def _authenticated(self, server: _RecordingSMTP, mechanism: str, user: str) -> AuthResult:
        if mechanism in self._owner.refuse_auth:
            return AuthResult(success=False, handled=False)
        server.record.authenticated = (mechanism, user)
        return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))

    async def auth_CRAM__MD5(self, server: _RecordingSMTP, args: list[str]) -> AuthResult:
        challenge = f"<{id(server)}.{len(server.record.commands)}@{SERVER_NAME}>".encode()
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes) or b" " not in response:
            return AuthResult(success=False, handled=False)
        user, digest = response.decode().rsplit(" ", 1)
        password = self._password(user)
        if password is None:
            return AuthResult(success=False, handled=False)
        expected = hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()
        if not hmac.compare_digest(expected, digest):
            return AuthResult(success=False, handled=False)
        return self._authenticated(server, "CRAM-MD5", user)

    async def _scram(self, server: _RecordingSMTP, args: list[str], name: str) -> AuthResult:
        binding = None
        if name.endswith("-PLUS"):
            assert server.transport is not None
            ssl_object = server.transport.get_extra_info("ssl_object")
            data = ssl_object.get_channel_binding("tls-unique") if ssl_object else None
            if data is None:
                return AuthResult(success=False, handled=False)
            binding = ("tls-unique", data)
        mechanism = scramp.ScramMechanism(name.removesuffix("-PLUS"))
        users = {
            user: mechanism.make_auth_info(password, iteration_count=4096)
            for user, password in (self._owner.auth_users or {}).items()
        }
        seen: list[str] = []

        def auth_info(user: str) -> tuple[bytes, bytes, bytes, int]:
            seen.append(user)
            return users[user]

        scram = mechanism.make_server(auth_info, channel_binding=binding)
        try:
            if len(args) < 2:
                return AuthResult(success=False, handled=False)
            scram.set_client_first(base64.b64decode(args[1]).decode())
            client_final = await server.challenge_auth(scram.get_server_first())
            if not isinstance(client_final, bytes):
                return AuthResult(success=False, handled=False)
            scram.set_client_final(client_final.decode())
            if self._owner.scram_bad_server_signature:
                final = "v=" + base64.b64encode(b"\0" * 32).decode()
            else:
                final = scram.get_server_final()
            last = await server.challenge_auth(final)
            if last != b"":
                return AuthResult(success=False, handled=False)
        except (scramp.ScramException, KeyError, ValueError):
            return AuthResult(success=False, handled=False)
        return self._authenticated(server, name, seen[-1])

    async def auth_XOAUTH2(self, server: _RecordingSMTP, args: list[str]) -> AuthResult:
        """Google's XOAUTH2: tokens are the ``auth_users`` passwords."""
        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        fields = base64.b64decode(args[1]).split(b"\x01")
        values = dict(f.split(b"=", 1) for f in fields if b"=" in f)
        user = values.get(b"user", b"").decode()
        auth = values.get(b"auth", b"").decode()
        token = self._password(user)
        if token is not None and auth == f"Bearer {token}":
            return self._authenticated(server, "XOAUTH2", user)
        # The error challenge, then the client's empty answer, then 535.
        error = b'{"status":"401","schemes":"bearer","scope":"https://mail.example/"}'
        await server.challenge_auth(error)
        return AuthResult(success=False, handled=False)

    async def auth_X__TEST(self, server: _RecordingSMTP, args: list[str]) -> AuthResult:
        """The third-party plugin test's toy mechanism: "user:drowssap" (reversed)."""
        if len(args) < 2:
            return AuthResult(success=False, handled=False)
        user, _, proof = base64.b64decode(args[1]).decode().partition(":")
        password = self._password(user)
        if password is not None and proof == password[::-1]:
            return self._authenticated(server, "X-TEST", user)
        return AuthResult(success=False, handled=False)

    async def auth_SCRAM__SHA__1(self, server: _RecordingSMTP, args: list[str]) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-1")

    async def auth_SCRAM__SHA__256(self, server: _RecordingSMTP, args: list[str]) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-256")

    async def auth_SCRAM__SHA__256__PLUS(
        self, server: _RecordingSMTP, args: list[str]
    ) -> AuthResult:
        return await self._scram(server, args, "SCRAM-SHA-256-PLUS")

    @staticmethod
    def _end_open_transaction(record: SessionRecord) -> None:
        current = record.current
        if current is not None:
            current.reset = True

    async def handle_EHLO(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        record = server.record
        record.helo_name = hostname
        server.note_tls()
        self._end_open_transaction(record)
        if self._owner.ehlo_reply is not None:
            return [self._owner.ehlo_reply]
        session.host_name = hostname
        keywords = [
            line[4:]
            for line in responses[1:]
            if (line[4:].split() or [""])[0].upper() not in self._owner.without_ehlo
        ]
        extras = list(self._owner.extra_ehlo)
        if not server.record.hello_tls[-1]:
            extras += self._owner.plain_only_ehlo
        for extra in extras:
            name = extra.split()[0].upper() if extra.split() else extra
            keywords = [k for k in keywords if (k.split() or [""])[0].upper() != name]
            keywords.insert(len(keywords) - 1, extra)  # keep HELP last
        lines = [responses[0][4:], *keywords]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_HELO(
        self, server: _RecordingSMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        record = server.record
        record.helo_name = hostname
        server.note_tls()
        self._end_open_transaction(record)
        if self._owner.helo_reply is not None:
            return self._owner.helo_reply
        session.host_name = hostname
        return f"250 {SERVER_NAME}"

    async def handle_MAIL(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self._owner.mail_reply is not None:
            return self._owner.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        server.record.transactions.append(
            Transaction(
                mail_from="" if address == "" else str(address), mail_options=list(mail_options)
            )
        )
        return "250 OK"

    async def handle_RCPT(
        self,
        server: _RecordingSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        transaction = server.record.current
        refusal = self._owner._refusal_for(address)
        if refusal is not None:
            code, text = refusal
            if transaction is not None:
                transaction.refused_rcpts.append((address, code, text))
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if transaction is not None:
            transaction.rcpt_tos.append(address)
            transaction.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(
        self, server: _RecordingSMTP, session: Session, envelope: Envelope
    ) -> str:
        transaction = server.record.current
        content = envelope.original_content or b""
        reply: str = self._owner.data_final_reply or "250 OK"
        if transaction is not None:
            transaction.data_wire = server._data_wire()
            transaction.content = bytes(content)
            transaction.octets = len(content)
        if self._owner.close_after_data:
            # Hang up without a reply; connection_lost then cancels this coroutine.
            assert server.transport is not None
            server.transport.close()
            await asyncio.get_running_loop().create_future()
        if self._owner.stall_after_data:
            # Never answer; the client's wait runs out (stop() drops the connection).
            await asyncio.get_running_loop().create_future()
        if transaction is not None:
            transaction.data_reply = reply
        return reply

    async def handle_RSET(
        self, server: _RecordingSMTP, session: Session, envelope: Envelope
    ) -> str:
        self._end_open_transaction(server.record)
        return "250 OK"


class RecordingServer:
    """An SMTP server on 127.0.0.1 (OS-assigned port) recording every session.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        extra_ehlo: list[str] | None = None,
        refuse_rcpt: dict[str, tuple[int, str]] | None = None,
        greeting: str | None = None,
        ehlo_reply: str | None = None,
        helo_reply: str | None = None,
        mail_reply: str | None = None,
        data_final_reply: str | None = None,
        close_after_data: bool = False,
        stall_after_data: bool = False,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: ssl.SSLContext | None = None,
        starttls_reply: str | None = None,
        inject_after_starttls: bytes | None = None,
        plain_only_ehlo: list[str] | None = None,
        auth_users: dict[str, str] | None = None,
        auth_mechanisms: list[str] | None = None,
        auth_require_tls: bool = False,
        scram_bad_server_signature: bool = False,
        refuse_auth: list[str] | None = None,
        chunking: bool = False,
        discard_data: bool = False,
        accept_data_without_rcpt: bool = False,
        mail_421_once: bool = False,
        without_ehlo: list[str] | None = None,
    ) -> None:
        self.host = HOST
        self.port = 0
        self.extra_ehlo = list(extra_ehlo or [])
        self.refuse_rcpt = {key.lower(): value for key, value in (refuse_rcpt or {}).items()}
        self.greeting = greeting
        self.ehlo_reply = ehlo_reply
        self.helo_reply = helo_reply
        self.mail_reply = mail_reply
        self.data_final_reply = data_final_reply
        self.close_after_data = close_after_data
        self.stall_after_data = stall_after_data
        self.tls_context = tls_context
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.starttls_reply = starttls_reply
        self.inject_after_starttls = inject_after_starttls
        self.plain_only_ehlo = list(plain_only_ehlo or [])
        self.auth_users = dict(auth_users) if auth_users is not None else None
        # No AUTH unless users are given; then every mechanism unless limited.
        self.offered_auth_mechanisms = (
            []
            if auth_users is None
            else list(auth_mechanisms if auth_mechanisms is not None else DEFAULT_AUTH_MECHANISMS)
        )
        self.auth_require_tls = auth_require_tls
        self.scram_bad_server_signature = scram_bad_server_signature
        self.refuse_auth = list(refuse_auth or [])
        self.chunking = chunking
        if chunking:
            self.extra_ehlo.append("CHUNKING")
        self.discard_data = discard_data
        self.accept_data_without_rcpt = accept_data_without_rcpt
        self.mail_421_once = mail_421_once
        self.without_ehlo = [k.upper() for k in without_ehlo or []]
        self.sessions: list[SessionRecord] = []
        self._size_limit = _DEFAULT_SIZE_LIMIT
        for keyword in self.extra_ehlo:
            words = keyword.split()
            if len(words) == 2 and words[0].upper() == "SIZE" and words[1].isdigit():
                self._size_limit = int(words[1])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._protocols: set[_RecordingSMTP] = set()
        self._lock = threading.Condition()
        self._start_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> RecordingServer:
        """Start listening; returns self once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("RecordingServer already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="RecordingServer", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise TimeoutError("RecordingServer did not start")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        return self

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(
                        lambda: _RecordingSMTP(self, loop), HOST, 0, ssl=self.implicit_tls
                    )
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                ready.set()
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self._protocols):
            transport = protocol.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        # Let the transports' connection_lost callbacks run.
        for _ in range(3):
            await asyncio.sleep(0)

    def stop(self) -> None:
        """Stop the server, dropping any connection still open. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            if self._server is not None and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
                future.result(_STOP_TIMEOUT)
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            self._thread = None
            self._loop = None
            self._server = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- records --------------------------------------------------------------

    def _session_started(self, protocol: _RecordingSMTP) -> None:
        with self._lock:
            self._protocols.add(protocol)
            self.sessions.append(protocol.record)
            self._lock.notify_all()

    def _session_ended(self, protocol: _RecordingSMTP) -> None:
        with self._lock:
            self._protocols.discard(protocol)
            self._lock.notify_all()

    def _refusal_for(self, address: str) -> tuple[int, str] | None:
        lowered = address.lower()
        if lowered in self.refuse_rcpt:
            return self.refuse_rcpt[lowered]
        _, at, domain = lowered.rpartition("@")
        if at:
            return self.refuse_rcpt.get("@" + domain)
        return None

    @property
    def messages(self) -> list[Transaction]:
        """Every delivered transaction (accepted after DATA), in order, across sessions."""
        return [t for s in list(self.sessions) for t in list(s.transactions) if t.delivered]

    @property
    def last(self) -> Transaction:
        """The last delivered transaction; AssertionError if there is none."""
        messages = self.messages
        if not messages:
            raise AssertionError("the server has received no message")
        return messages[-1]

    @property
    def commands(self) -> list[str]:
        """The command lines of every session, concatenated."""
        return [c for s in list(self.sessions) for c in list(s.commands)]

    def drop_connections(self) -> None:
        """Close every open client connection from the server side, as an
        idle timeout would; returns once they are closed."""
        assert self._loop is not None
        done = threading.Event()

        def close_all() -> None:
            for protocol in list(self._protocols):
                # abort(): a TLS transport's close() would wait for the idle
                # client's close_notify.
                original = getattr(protocol, "_original_transport", None)
                transport = original or protocol.transport
                if transport is not None:
                    transport.abort()
            done.set()

        self._loop.call_soon_threadsafe(close_all)
        done.wait(5)
        self.wait_idle()

    def wait_for_sessions(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` sessions have started."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.sessions) >= count, timeout):
                raise TimeoutError(f"{len(self.sessions)} of {count} sessions started")

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every session seen so far has ended (the client hung up)."""
        with self._lock:
            if not self._lock.wait_for(lambda: not self._protocols, timeout):
                raise TimeoutError(f"{len(self._protocols)} session(s) still open")


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections (into the listen backlog)
    but never says anything: no greeting, ever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 where connections are refused, for the block's duration.

    The port is bound (so nothing else can take it) but never listened on.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()
