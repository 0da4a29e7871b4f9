"""``smtplug.sendmessage``: Tcllib's ``::smtp::sendmessage`` in Python.

This layer validates the options (Tcllib's names and defaults), builds the
envelope, picks the plugins, runs the session steps through the driver and
returns the result. It holds no socket code: connections are opened by the
transport plugins.
"""

from __future__ import annotations

import contextlib
import email.message
import getpass
import logging
import math
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from smtplug import envelope, session
from smtplug.driver import Connection
from smtplug.errors import (
    ConnectError,
    InvalidInputError,
    ResponseError,
    ServerFailure,
    SMTPError,
    TLSError,
)
from smtplug.hookspecs import hookimpl
from smtplug.interfaces import ConnectionInfo, TLSPolicy, Transport
from smtplug.plugins import Registry, build_registry
from smtplug.protocol import Capabilities, Reply, commands

__all__ = ["SendResult", "TLSPolicyCallable", "sendmessage"]

logger = logging.getLogger("smtplug")

TLSPolicyCallable = Callable[[int, str], str]
Message = email.message.Message | bytes | str


class SendResult(list[tuple[str, int, str]]):
    """The refused recipients, ``[(address, code, diagnostic), ...]``, as Tcllib
    returns them; also says whether and where the message was accepted.

    ``accepted`` is True only when the server answered the final "." with
    success. A non-empty list with ``accepted`` True means the message went
    to the other recipients (``atleastone=True``); with ``accepted`` False the
    transaction was reset and nothing was sent.
    """

    accepted: bool
    server: str | None
    port: int | None
    reply: Reply | None
    recipients: tuple[str, ...]

    def __init__(
        self,
        refused: Iterable[tuple[str, int, str]] = (),
        *,
        accepted: bool = False,
        server: str | None = None,
        port: int | None = None,
        reply: Reply | None = None,
        recipients: Sequence[str] = (),
    ) -> None:
        super().__init__(refused)
        self.accepted = accepted
        self.server = server
        self.port = port
        self.reply = reply
        self.recipients = tuple(recipients)  # the recipients the server accepted

    def __repr__(self) -> str:
        return (
            f"SendResult({list(self)!r}, accepted={self.accepted!r}, "
            f"server={self.server!r}, port={self.port!r})"
        )


class _Transcript:
    """Tcllib's ``-debug``: the transcript on stderr; always the ``smtplug`` logger."""

    def __init__(self, debug: bool, stream: TextIO | None = None) -> None:
        self._debug = debug
        self._stream = stream

    def _emit(self, info: ConnectionInfo, text: str) -> None:
        logger.debug("%s:%s %s", info.server, info.port, text)
        if self._debug:
            out = self._stream or sys.stderr
            out.write(text + "\n")
            out.flush()

    @hookimpl
    def smtplug_on_event(self, info: ConnectionInfo, event: str) -> None:
        self._emit(info, f"    ... {event}")

    @hookimpl
    def smtplug_on_command(self, info: ConnectionInfo, command: str) -> None:
        self._emit(info, f"--> {command}")

    @hookimpl
    def smtplug_on_reply(self, info: ConnectionInfo, reply: Reply) -> None:
        for line in str(reply).split("\n"):
            self._emit(info, f"<-- {line}")


class _CallablePolicy:
    name = "<callable>"

    def __init__(self, function: TLSPolicyCallable) -> None:
        self._function = function

    def decide(self, code: int, diagnostic: str) -> Literal["secure", "insecure"]:
        answer = self._function(code, diagnostic)
        if answer not in ("secure", "insecure"):
            # Tcllib treats anything but "insecure" as "secure"; so do we,
            # which fails closed.
            return "secure"
        return answer  # type: ignore[return-value]


class _TcllibDefaultPolicy:
    """Tcllib with no ``-tlspolicy``: carry on without TLS."""

    name = "<tcllib default>"

    def decide(self, code: int, diagnostic: str) -> Literal["secure", "insecure"]:
        return "insecure"


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, not {value!r}")
    return value


def _seconds(name: str, value: object, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _as_list(name: str, value: object, kind: type) -> list[Any]:
    items = [value] if isinstance(value, kind) else value
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidInputError(f"{name} must be a {kind.__name__} or a list of them")
    items = list(items)
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise InvalidInputError(f"{name} must hold {kind.__name__} values, not {item!r}")
    return items


def _servers_and_ports(servers: object, ports: object) -> list[tuple[str, int]]:
    server_list: list[str] = _as_list("servers", servers, str)
    port_list: list[int] = _as_list("ports", ports, int)
    if not server_list:
        raise InvalidInputError("servers is empty")
    for server in server_list:
        if not server or server.strip() != server or any(c.isspace() for c in server):
            raise InvalidInputError(f"invalid server name {server!r}")
        if not server.isprintable() or "/" in server:
            raise InvalidInputError(f"invalid server name {server!r}")
    for port in port_list:
        if not 0 < port < 65536:
            raise InvalidInputError(f"invalid port {port!r}")
    # Tcllib iterates ports in tandem with servers: missing ports are 25,
    # superfluous ports are ignored.
    return [
        (server, port_list[index] if index < len(port_list) else 25)
        for index, server in enumerate(server_list)
    ]


def _hostname() -> str:
    return platform.node() or "localhost"


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception as exc:  # getuser raises OSError, or KeyError on odd systems
        raise InvalidInputError(
            f"no originator given and the login name is unknown ({exc}): give originator="
        ) from exc


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything validated, before any connection is opened."""

    targets: list[tuple[str, int]]
    client: str
    transport: Transport
    policy: TLSPolicy
    usetls: bool
    timeouts: session.Timeouts
    connect_timeout: float | None
    transport_options: dict[str, Any]


def _plan(
    registry: Registry,
    *,
    servers: object,
    ports: object,
    client: object,
    usetls: bool,
    tlsimport: bool,
    tlspolicy: object,
    username: object,
    password: object,
    timeout: float | None,
    maxsecs: float | None,
) -> _Plan:
    targets = _servers_and_ports(servers, ports)
    if client is None:
        # Tcllib: "localhost" when the server list is just localhost, else
        # this host's name.
        client = "localhost" if [s for s, _ in targets] == ["localhost"] else _hostname()
    if not isinstance(client, str):
        raise InvalidInputError(f"client must be a str, not {client!r}")
    commands.ehlo(client)  # validates the name before any connection

    if tlsimport:
        name = "implicit-tls"
    elif usetls and "starttls" in registry.transports:
        name = "starttls"
    else:
        name = "plain"
    transport = registry.transports.get(name)
    if transport is None:
        why = "tlsimport=True needs" if tlsimport else "smtplug needs"
        raise InvalidInputError(
            f"{why} the {name!r} transport plugin, which is not installed or is blocked "
            f"(installed transports: {sorted(registry.transports) or 'none'})"
        )

    policy: TLSPolicy
    if tlspolicy is None:
        policy = _TcllibDefaultPolicy()
    elif isinstance(tlspolicy, str):
        named = registry.tls_policies.get(tlspolicy)
        if named is None:
            raise InvalidInputError(
                f"no TLS policy named {tlspolicy!r} is installed "
                f"(installed: {sorted(registry.tls_policies) or 'none'})"
            )
        policy = named
    elif callable(tlspolicy):
        policy = _CallablePolicy(tlspolicy)
    else:
        raise InvalidInputError("tlspolicy must be None, a policy name or a callable")

    if username is not None and not isinstance(username, str):
        raise InvalidInputError("username must be a str")
    if password is not None and not isinstance(password, str):
        raise InvalidInputError("password must be a str")
    if password is not None and not username:
        raise InvalidInputError("password given without username")
    if username:
        for what, value in (("username", username), ("password", password or "")):
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise InvalidInputError(f"{what} contains a control character")
        if not registry.sasl_mechanisms:
            raise InvalidInputError(
                "username given but no SASL mechanism plugin is installed, so smtplug "
                "cannot authenticate (and will not send unauthenticated instead)"
            )

    timeouts = session.Timeouts.tcllib(timeout=timeout, maxsecs=maxsecs)
    return _Plan(
        targets=targets,
        client=client,
        transport=transport,
        policy=policy,
        usetls=usetls,
        timeouts=timeouts,
        connect_timeout=timeout if timeout is not None else timeouts.command,
        transport_options={},
    )


def _open(plan: _Plan, registry: Registry) -> tuple[Connection, Capabilities]:
    """Try each server in turn until one greets with 220 and accepts EHLO/HELO."""
    failures: list[ServerFailure] = []
    hook = registry.hook
    for server, port in plan.targets:
        info = ConnectionInfo(server, port, plan.transport.name)
        hook.smtplug_on_event(info=info, event=f"Trying {server}:{port}...")
        try:
            stream = plan.transport.connect(
                server, port, timeout=plan.connect_timeout, options=plan.transport_options
            )
        except SMTPError as exc:
            hook.smtplug_on_event(info=info, event=f"server failed: {exc}")
            failures.append(ServerFailure(server, port, exc))
            continue
        connection = Connection(stream, info, hook)
        try:
            connection.run(session.greet(plan.timeouts))
            capabilities = connection.run(session.hello(plan.client, plan.timeouts))
            if plan.usetls and capabilities.starttls and not stream.tls:
                _no_starttls(connection, plan.policy)
        except SMTPError as exc:
            connection.event(f"server failed: {exc}")
            connection.close()
            failures.append(ServerFailure(server, port, exc))
            continue
        return connection, capabilities
    raise ConnectError.from_failures(failures)


def _no_starttls(connection: Connection, policy: TLSPolicy) -> None:
    """The server offers STARTTLS but this installation cannot do TLS.

    Tcllib, without its tls package, carries on in plain text; smtplug asks
    the TLS policy first (with a pseudo 454, "TLS not available"), so a caller
    whose policy says "secure" never sends in the clear.
    """
    diagnostic = (
        "STARTTLS offered but no TLS-capable transport plugin is installed "
        "(the 'starttls' transport)"
    )
    decision = policy.decide(454, diagnostic)
    connection.event(f"{diagnostic}: policy {policy.name} says {decision}")
    if decision != "insecure":
        raise TLSError(f"{diagnostic}; the TLS policy refused to continue without TLS", 454)


def _finish(connection: Connection, timeouts: session.Timeouts) -> None:
    """QUIT when the connection is still sound, then close; never raises."""
    if not connection.broken:
        with contextlib.suppress(SMTPError):
            connection.run(session.quit(timeouts))
    connection.close()


def sendmessage(
    message: Message,
    *,
    servers: str | Sequence[str] = "localhost",
    ports: int | Sequence[int] = 25,
    client: str | None = None,
    queue: bool = False,
    atleastone: bool = False,
    originator: str | None = None,
    recipients: str | Sequence[str] | None = None,
    header: Sequence[tuple[str, str]] = (),
    usetls: bool = True,
    tlsimport: bool = False,
    tlspolicy: str | TLSPolicyCallable | None = None,
    username: str | None = None,
    password: str | None = None,
    debug: bool = False,
    maxsecs: float = 120,
    timeout: float | None = None,
    plugins: Sequence[object] = (),
    block_plugins: Sequence[str] = (),
) -> SendResult:
    """Send ``message`` by SMTP, as Tcllib's ``::smtp::sendmessage`` does.

    Returns the refused recipients as a :class:`SendResult` (a list of
    ``(address, code, diagnostic)``; empty when every recipient was
    accepted). Raises a :class:`smtplug.SMTPError` subclass on failure; bad
    input raises :class:`smtplug.InvalidInputError` before any connection is
    opened. See ``docs/options.md`` for every option beside Tcllib's.
    """
    for name, value in (
        ("queue", queue),
        ("atleastone", atleastone),
        ("usetls", usetls),
        ("tlsimport", tlsimport),
        ("debug", debug),
    ):
        _flag(name, value)
    maxsecs_value = _seconds("maxsecs", maxsecs, optional=False)
    timeout_value = _seconds("timeout", timeout, optional=True)
    block = _as_list("block_plugins", block_plugins, str)
    if isinstance(plugins, str | bytes) or not isinstance(plugins, Iterable):
        raise InvalidInputError("plugins must be a list of plugin objects")

    registry = build_registry(extra=[_Transcript(debug), *plugins], block=block)
    plan = _plan(
        registry,
        servers=servers,
        ports=ports,
        client=client,
        usetls=usetls,
        tlsimport=tlsimport,
        tlspolicy=tlspolicy,
        username=username,
        password=password,
        timeout=timeout_value,
        maxsecs=maxsecs_value,
    )
    prepared = envelope.prepare(
        message,
        originator=originator,
        recipients=recipients,
        header=header,
        login=_login,
        hostname=_hostname(),
    )

    connection, capabilities = _open(plan, registry)
    try:
        if queue and capabilities.has("XQUE"):
            connection.run(session.queue(plan.timeouts))
        outcome = connection.run(
            session.transaction(
                sender=prepared.sender,
                recipients=prepared.recipients,
                data=prepared.data,
                capabilities=capabilities,
                atleastone=atleastone,
                timeouts=plan.timeouts,
            )
        )
    except ResponseError:
        _finish(connection, plan.timeouts)
        raise
    except BaseException:
        connection.close()
        raise
    _finish(connection, plan.timeouts)
    return SendResult(
        outcome.refused,
        accepted=outcome.delivered,
        server=connection.info.server,
        port=connection.info.port,
        reply=outcome.reply,
        recipients=outcome.accepted_recipients,
    )
