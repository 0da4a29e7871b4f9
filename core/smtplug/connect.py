"""Choosing a server and making a session ready for mail: failover and TLS.

Theory of operation. :func:`open_session` walks the server list in order. For
each server it asks the transport plugin for a stream, reads the greeting,
says EHLO (HELO after a 5xx), and then settles TLS:

* implicit TLS (``tlsimport``): the transport did the handshake already;
* STARTTLS (``usetls``): when offered, STARTTLS, a 220, the handshake (the
  driver refuses if the server sent anything after the 220: response
  injection), and EHLO again, every earlier capability forgotten;
* whenever TLS cannot be had (not offered, no STARTTLS transport, refused,
  failed handshake, failed certificate check) the TLS policy decides:
  ``"secure"`` gives the server up, ``"insecure"`` carries on in plain text:
  on the same connection, or after a failed handshake on a fresh plain
  connection to the same server (the old one is unusable). An attack
  (injection) is never downgraded.

Any :class:`~smtplug.errors.SMTPError` on the way fails that server; the next
is tried. When none is left, :class:`~smtplug.errors.ConnectError` names each
server and its failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from smtplug import session
from smtplug.driver import Connection
from smtplug.errors import ConnectError, ServerFailure, SMTPError, TLSError
from smtplug.interfaces import (
    ConnectionInfo,
    TLSFailure,
    TLSFailureKind,
    TLSPolicy,
    Transport,
    UpgradableStream,
)
from smtplug.protocol import Capabilities

__all__ = ["CallablePolicy", "ConnectionPlan", "open_session"]

TLSPolicyCallable = Callable[[int, str], str]


class CallablePolicy:
    """Tcllib's ``-tlspolicy`` command: ``function(code, diagnostic)``.

    It is called when TLS setup fails; as in Tcllib it is not called when
    the server simply does not offer STARTTLS (that carries on in plain text;
    use the ``"require"`` policy to refuse it). Any answer but ``"insecure"``
    means ``"secure"``, as in Tcllib.
    """

    name = "<callable>"

    def __init__(self, function: TLSPolicyCallable) -> None:
        self._function = function

    def decide(self, failure: TLSFailure) -> Literal["secure", "insecure"]:
        if failure.kind == "absent":
            return "insecure"
        return (
            "insecure"
            if self._function(failure.code, failure.diagnostic) == "insecure"
            else "secure"
        )


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """Everything needed to open a session, validated before any connection."""

    targets: tuple[tuple[str, int], ...]
    client: str
    transport: Transport
    policy: TLSPolicy
    usetls: bool
    timeouts: session.Timeouts
    connect_timeout: float | None
    transport_options: Mapping[str, Any]
    tls_verify: bool = True


def open_session(plan: ConnectionPlan, hook: Any) -> tuple[Connection, Capabilities]:
    """The first server that greets, says hello and settles TLS as the policy wants."""
    failures: list[ServerFailure] = []
    for server, port in plan.targets:
        try:
            return _establish(plan, hook, server, port, starttls=True)
        except SMTPError as exc:
            hook.smtplug_on_event(
                info=ConnectionInfo(server, port, plan.transport.name),
                event=f"server failed: {exc}",
            )
            failures.append(ServerFailure(server, port, exc))
    raise ConnectError.from_failures(failures)


def _decide(
    plan: ConnectionPlan,
    connection: Connection,
    kind: TLSFailureKind,
    code: int,
    diagnostic: str,
) -> None:
    """Ask the policy; raise :class:`TLSError` when it says ``"secure"``."""
    decision = plan.policy.decide(TLSFailure(kind, code, diagnostic))
    connection.event(f"TLS {kind}: {diagnostic}; policy {plan.policy.name} says {decision}")
    if decision != "insecure":
        raise TLSError(
            f"{diagnostic}; the TLS policy ({plan.policy.name}) does not allow "
            "going on without TLS",
            code,
            certificate=kind == "certificate",
        )


def _establish(
    plan: ConnectionPlan, hook: Any, server: str, port: int, *, starttls: bool
) -> tuple[Connection, Capabilities]:
    info = ConnectionInfo(server, port, plan.transport.name)
    hook.smtplug_on_event(info=info, event=f"Trying {server}:{port}...")
    stream = plan.transport.connect(
        server, port, timeout=plan.connect_timeout, options=plan.transport_options
    )
    connection = Connection(
        stream, ConnectionInfo(server, port, plan.transport.name, stream.tls), hook
    )
    try:
        if stream.tls:
            _announce_tls(plan, connection)
        connection.run(session.greet(plan.timeouts))
        capabilities = connection.run(session.hello(plan.client, plan.timeouts))
        if not plan.usetls or stream.tls:
            return connection, capabilities
        if not capabilities.starttls:
            _decide(plan, connection, "absent", 454, f"{server} does not offer STARTTLS")
            return connection, capabilities
        if not isinstance(stream, UpgradableStream):
            _decide(
                plan,
                connection,
                "unavailable",
                454,
                f"{server} offers STARTTLS but no STARTTLS transport plugin is in use",
            )
            return connection, capabilities
        if not starttls:
            connection.event("STARTTLS not tried again: the policy chose plain text")
            return connection, capabilities

        reply = connection.run(session.starttls(plan.timeouts))
        if reply.code != 220:
            _decide(plan, connection, "refused", reply.code, f"STARTTLS refused: {reply}")
            return connection, capabilities
        try:
            connection.run(session.upgrade(plan.timeouts))
        except TLSError as exc:
            if exc.attack:
                raise
            kind: TLSFailureKind = "certificate" if exc.certificate else "handshake"
            _decide(plan, connection, kind, exc.code, exc.diagnostic)
            # Carry on without TLS: the failed handshake left this connection
            # unusable, so open a fresh plain one that does not try again.
            connection.close()
            return _establish(plan, hook, server, port, starttls=False)
        _announce_tls(plan, connection)
        return connection, connection.run(session.hello(plan.client, plan.timeouts))
    except BaseException:
        connection.close()
        raise


def _announce_tls(plan: ConnectionPlan, connection: Connection) -> None:
    tls = connection.tls_info
    if tls is None:
        return
    checked = "certificate verified" if tls.verified else "certificate NOT verified"
    connection.event(f"TLS established: {tls.version} {tls.cipher} ({tls.backend}, {checked})")
    if not plan.tls_verify:
        connection.event(
            "WARNING: tls_verify=False: the server's certificate and host name are not "
            "checked; anyone on the path can read and change this session"
        )
