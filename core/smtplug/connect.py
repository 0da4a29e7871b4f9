"""Choosing a server and making a session ready for mail: failover.

Theory of operation. :func:`open_session` (a program: it yields the actions
of :mod:`smtplug.actions`) walks the server list in order. For each server
it opens a connection with the plan's transport (``Open``), reads the
greeting, says EHLO (HELO after a 5xx), settles TLS as the policy wants
(:func:`smtplug.tlssetup.settle`; implicit TLS was done by the transport)
and, when a username was given, authenticates
(:func:`smtplug.auth.authenticate`).

Any :class:`~smtplug.errors.SMTPError` on the way fails that server; the next
is tried. When none is left, :class:`~smtplug.errors.ConnectError` names each
server and its failure. A refused login is not failed over (the credentials
are the caller's, and Tcllib does not move on either); a server that closes
(421) or is gone during AUTH is a server failure like any other.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from smtplug import auth, events, session, tlssetup
from smtplug.actions import CLOSE, Open
from smtplug.auth import AuthPlan
from smtplug.errors import (
    ConnectError,
    ConnectionLostError,
    ResponseError,
    ServerFailure,
    SMTPError,
    TLSError,
)
from smtplug.interfaces import (
    SMTP,
    AsyncTransport,
    ConnectionInfo,
    Dialect,
    TLSPolicy,
    Transport,
)
from smtplug.protocol import Capabilities
from smtplug.wire import Wire

__all__ = ["ConnectionPlan", "open_session"]


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """Everything needed to open a session, validated before any connection."""

    targets: tuple[tuple[str, int], ...]
    client: str
    transport: Transport
    policy: TLSPolicy
    usetls: bool
    timeouts: session.Timeouts
    transport_options: Mapping[str, Any]
    tls_verify: bool = True
    auth: AuthPlan | None = None
    #: The asyncio variant of ``transport`` (None when no plugin registers one).
    async_transport: AsyncTransport | None = None
    #: TLS sessions to resume, by (server, port): the same dict the transports
    #: read through ``transport_options["tls_sessions"]``; connections save theirs.
    tls_sessions: dict[tuple[str, int], object] = dataclasses.field(default_factory=dict)
    #: The protocol the transport's servers speak (its ``dialect``; LMTP's LHLO ...).
    dialect: Dialect = SMTP


def open_session(
    plan: ConnectionPlan, hook: Any, *, failed: list[ServerFailure] | None = None
) -> Generator[Any, Any, tuple[Wire, Capabilities]]:
    """A program: the first server that greets, says hello and settles TLS as
    the policy wants (authenticated when the plan says so); its connection is
    the driver's current one.

    ``failed`` collects the servers given up, in order; servers already in it
    (given up earlier in the same send, e.g. after a 421 mid-transaction) are
    not tried again, and all are named in the error when none is left.
    """
    failures: list[ServerFailure] = [] if failed is None else failed
    skip = {(f.server, f.port) for f in failures}
    for server, port in plan.targets:
        if (server, port) in skip:
            continue
        try:
            wire, capabilities = yield from _establish(plan, hook, server, port, starttls=True)
        except SMTPError as exc:
            hook.smtplug_on_event(
                info=ConnectionInfo(server, port, plan.transport.name),
                event=events.ServerFailed(server, port, exc),
                phase="connect",
            )
            failures.append(ServerFailure(server, port, exc))
            continue
        if plan.auth is not None:
            # A refused login is not failed over: the credentials are the
            # caller's, and Tcllib does not move on either. A server that is
            # closing (421) or gone is a server failure like any other.
            try:
                yield from auth.authenticate(
                    plan.auth, plan.timeouts, plan.usetls, wire, capabilities
                )
            except (ResponseError, ConnectionLostError) as exc:
                yield CLOSE
                if isinstance(exc, ResponseError) and exc.code != 421:
                    raise
                wire.event(events.ServerFailed(server, port, exc))
                failures.append(ServerFailure(server, port, exc))
                continue
            except Exception:
                yield CLOSE
                raise
        return wire, capabilities
    raise ConnectError.from_failures(failures)


#: Numbers for the connections of this process (``ConnectionInfo.connection``).
_CONNECTIONS = itertools.count(1)

#: What an OpenSSL handshake says when the server answered in plain text.
_PLAIN_SMTP = re.compile(r"wrong version number|http request|packet length too long", re.I)


def _establish(
    plan: ConnectionPlan, hook: Any, server: str, port: int, *, starttls: bool
) -> Generator[Any, Any, tuple[Wire, Capabilities]]:
    info = ConnectionInfo(server, port, plan.transport.name, connection=next(_CONNECTIONS))
    if hook.hears_events():  # (no event built for nobody)
        hook.smtplug_on_event(info=info, event=events.Connecting(server, port))
    try:
        wire: Wire = yield Open(info, plan.timeouts.connect)
    except TLSError as exc:
        if _PLAIN_SMTP.search(exc.diagnostic) is None:
            raise
        raise TLSError(
            f"{exc.diagnostic} (the server spoke plain text, not TLS: port {port} expects "
            "plain SMTP; use STARTTLS (usetls=True, tlsimport=False), or the port for "
            "implicit TLS, usually 465)",
            exc.code,
        ) from exc
    implicit = wire.info.tls
    try:
        if implicit:
            tlssetup.announce(plan, wire)
        try:
            yield from wire.step(session.greet(plan.timeouts))
        except ConnectionLostError as exc:
            # Plain SMTP to an implicit-TLS port: the server waits for a TLS
            # handshake, so no greeting comes (RFC 8314, port 465).
            if implicit or not (port == 465 or exc.timed_out):
                raise
            hint = (
                f"port {port} expects implicit TLS: use tlsimport=True"
                if port == 465
                else "if this port expects implicit TLS (usually 465), use tlsimport=True"
            )
            raise ConnectionLostError(
                f"{exc.diagnostic} ({hint}; a plain client gets no greeting there)",
                exc.code,
                timed_out=exc.timed_out,
            ) from exc
        capabilities = yield from wire.step(session.hello(plan.client, plan.timeouts, plan.dialect))
        if not plan.usetls or implicit:
            return wire, capabilities
        settled = yield from tlssetup.settle(plan, wire, capabilities, starttls=starttls)
        if settled is None:
            # Carry on without TLS: the failed handshake left this connection
            # unusable, so open a fresh plain one that does not try again.
            yield CLOSE
            return (yield from _establish(plan, hook, server, port, starttls=False))
        return wire, settled
    except Exception:
        yield CLOSE
        raise
