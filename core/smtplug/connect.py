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

Then, when a username was given, AUTH (RFC 4954): the mechanisms both sides
support, strongest first (or in the caller's ``mechanisms=`` order), each in
turn until one succeeds, as Tcllib does; never in the clear to a host that is
not loopback unless the caller opted in, and never a weaker mechanism after a
failure on an unencrypted link. An authentication failure is raised as
:class:`~smtplug.errors.AuthenticationError` naming every mechanism tried; it
does not move on to the next server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from smtplug import session
from smtplug.actions import CLOSE, Open
from smtplug.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    ResponseError,
    ServerFailure,
    SMTPError,
    TLSError,
)
from smtplug.interfaces import (
    AsyncTransport,
    ConnectionInfo,
    SASLCredentials,
    SASLMechanism,
    TLSFailure,
    TLSFailureKind,
    TLSPolicy,
    Transport,
)
from smtplug.observe import logger
from smtplug.protocol import Capabilities
from smtplug.wire import Wire

__all__ = ["AuthPlan", "CallablePolicy", "ConnectionPlan", "is_loopback", "open_session"]

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
class AuthPlan:
    """How to authenticate, validated before any connection.

    ``order`` is the caller's ``mechanisms=`` (restricts and orders), or None
    for every registered mechanism the server offers, strongest first.
    """

    credentials: SASLCredentials
    mechanisms: Mapping[str, SASLMechanism]
    order: tuple[str, ...] | None = None
    insecure_cleartext_auth: bool = False


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
                event=f"server failed: {exc}",
            )
            failures.append(ServerFailure(server, port, exc))
            continue
        if plan.auth is not None:
            # A refused login is not failed over: the credentials are the
            # caller's, and Tcllib does not move on either. A server that is
            # closing (421) or gone is a server failure like any other.
            try:
                yield from _authenticate(plan, plan.auth, wire, capabilities)
            except (ResponseError, ConnectionLostError) as exc:
                yield CLOSE
                if isinstance(exc, ResponseError) and exc.code != 421:
                    raise
                hook.smtplug_on_event(info=wire.info, event=f"server failed: {exc}")
                failures.append(ServerFailure(server, port, exc))
                continue
            except Exception:
                yield CLOSE
                raise
        return wire, capabilities
    raise ConnectError.from_failures(failures)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback address literals (no DNS lookup)."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _candidates(auth: AuthPlan, offered: tuple[str, ...]) -> list[SASLMechanism]:
    if auth.order is not None:
        names = [name for name in auth.order if name in offered]
    else:
        # EXTERNAL and ANONYMOUS only when asked for by name.
        names = [name for name in offered if name in auth.mechanisms and name not in _ON_REQUEST]
        names.sort(key=lambda name: -auth.mechanisms[name].strength)
    return [auth.mechanisms[name] for name in names if name in auth.mechanisms]


_ON_REQUEST = frozenset({"EXTERNAL", "ANONYMOUS"})


def _authenticate(
    plan: ConnectionPlan, auth: AuthPlan, wire: Wire, capabilities: Capabilities
) -> Generator[Any, Any, None]:
    """AUTH with the strongest usable mechanism, then the next, as Tcllib does.

    Refuses to authenticate in the clear to a host that is not loopback unless
    the caller opted in; on an unencrypted link a failed mechanism is never
    followed by a weaker one (a man in the middle could be forcing that).
    """
    info = wire.info
    tls = wire.tls_info
    offered = capabilities.auth_mechanisms
    if not offered:
        after = " (not even after STARTTLS)" if tls is not None and plan.usetls else ""
        raise AuthenticationError(
            f"{info.server} does not offer AUTH{after}; username was given, so smtplug "
            "does not send the message unauthenticated"
        )
    if tls is None and not is_loopback(info.server) and not auth.insecure_cleartext_auth:
        raise AuthenticationError(
            f"not authenticating to {info.server} over an unencrypted connection: the "
            "password (or a guessable challenge response) would cross the network in the "
            "clear. Use TLS (usetls=True with a server offering STARTTLS, or tlsimport=True), "
            "or pass insecure_cleartext_auth=True to accept the risk"
        )
    credentials = dataclasses.replace(
        auth.credentials, hostname=info.server, port=info.port, tls=tls
    )
    candidates = [m for m in _candidates(auth, offered) if m.supported(credentials)]
    if not candidates:
        usable = sorted(name for name, m in auth.mechanisms.items() if m.supported(credentials))
        raise AuthenticationError(
            f"no usable SASL mechanism: {info.server} offers {', '.join(offered)}; "
            f"smtplug can use {', '.join(usable) or 'none'} with the credentials given"
            + (f" (restricted to {', '.join(auth.order)})" if auth.order is not None else "")
        )
    tried: list[str] = []
    last: AuthenticationError | None = None
    failed_strength: int | None = None
    renewable = credentials.oauth_refresh is not None  # one token renewal at most
    pending = [(mechanism, credentials) for mechanism in candidates]
    while pending:
        mechanism, attempt = pending.pop(0)
        renewed = attempt is not credentials
        if tls is None and failed_strength is not None and mechanism.strength < failed_strength:
            wire.event(
                f"not trying the weaker {mechanism.name} after a failure on an "
                "unencrypted connection"
            )
            break
        took_token: list[bool] = []
        try:
            try:
                exchange = mechanism.start(_watch_token(attempt, took_token))
            except AuthenticationError:
                raise
            except Exception as exc:
                raise AuthenticationError(
                    f"{mechanism.name}: the mechanism could not start ({type(exc).__name__})"
                ) from exc
            yield from wire.step(session.authenticate(mechanism.name, exchange, plan.timeouts))
        except AuthenticationError as exc:
            tried.append(_renewed(mechanism.name, exc.diagnostic) if renewed else exc.diagnostic)
            last = exc
            failed_strength = mechanism.strength
            wire.event(f"authentication with {mechanism.name} failed")
            if wire.broken or exc.server_unverified:
                break
            if renewable and took_token and _token_refused(exc):
                # The token may have expired: ask the provider for a new one and
                # try the same mechanism once more with it (never the token shown).
                renewable = False
                pending.insert(0, (mechanism, _renewal(credentials)))
                wire.event(
                    f"{mechanism.name} refused the OAuth token; trying once more "
                    "with a new one from the token provider"
                )
            continue
        wire.event(f"authenticated with {mechanism.name}")
        return
    assert last is not None
    raise AuthenticationError(
        f"authentication to {info.server} failed; tried " + "; ".join(tried),
        last.code,
        server_unverified=last.server_unverified,
    )


def _watch_token(credentials: SASLCredentials, took: list[bool]) -> SASLCredentials:
    """``credentials`` whose ``oauth_token`` notes in ``took`` that it was called."""
    source = credentials.oauth_token
    if source is None:
        return credentials

    def token() -> str:
        took.append(True)
        return source()

    return dataclasses.replace(credentials, oauth_token=token)


def _token_refused(exc: AuthenticationError) -> bool:
    """The server refused the token (535, or a 5xx after its error challenge:
    RFC 7628 3.2.2), as opposed to a mechanism's own failure or a 4xx."""
    if not isinstance(exc, session.AuthRefused):
        return False
    return exc.code == 535 or (exc.challenged and 500 <= exc.code < 600)


def _renewal(credentials: SASLCredentials) -> SASLCredentials:
    """The credentials for the retry: the token is the provider's renewal."""
    return dataclasses.replace(
        credentials, oauth_token=credentials.oauth_refresh, oauth_refresh=None
    )


def _renewed(mechanism: str, diagnostic: str) -> str:
    """A retry's failure, told apart from the first attempt's."""
    again = f"{mechanism} again with a renewed token"
    prefix = f"{mechanism}: "
    if diagnostic.startswith(prefix):
        return f"{again}: {diagnostic[len(prefix) :]}"
    return f"{again}: {diagnostic}"


def _decide(
    plan: ConnectionPlan,
    wire: Wire,
    kind: TLSFailureKind,
    code: int,
    diagnostic: str,
) -> None:
    """Ask the policy; raise :class:`TLSError` when it says ``"secure"``."""
    decision = plan.policy.decide(TLSFailure(kind, code, diagnostic))
    wire.event(f"TLS {kind}: {diagnostic}; policy {plan.policy.name} says {decision}")
    if decision == "insecure":
        info = wire.info
        logger.warning(
            "%s:%s: going on WITHOUT TLS (%s: %s): the TLS policy %s allows it; anyone on "
            "the path can read and change the session (tlspolicy='require' refuses this)",
            info.server,
            info.port,
            kind,
            diagnostic,
            plan.policy.name,
        )
    else:
        raise TLSError(
            f"{diagnostic}; the TLS policy ({plan.policy.name}) does not allow "
            "going on without TLS",
            code,
            certificate=kind == "certificate",
            policy=True,
        )


#: Numbers for the connections of this process (``ConnectionInfo.connection``).
_CONNECTIONS = itertools.count(1)

#: What an OpenSSL handshake says when the server answered in plain text.
_PLAIN_SMTP = re.compile(r"wrong version number|http request|packet length too long", re.I)


def _establish(
    plan: ConnectionPlan, hook: Any, server: str, port: int, *, starttls: bool
) -> Generator[Any, Any, tuple[Wire, Capabilities]]:
    info = ConnectionInfo(server, port, plan.transport.name, connection=next(_CONNECTIONS))
    hook.smtplug_on_event(info=info, event=f"Trying {server}:{port}...")
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
            _announce_tls(plan, wire)
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
        capabilities = yield from wire.step(session.hello(plan.client, plan.timeouts))
        if not plan.usetls or implicit:
            return wire, capabilities
        if not capabilities.starttls:
            _decide(plan, wire, "absent", 454, f"{server} does not offer STARTTLS")
            return wire, capabilities
        if not wire.can_start_tls:
            _decide(
                plan,
                wire,
                "unavailable",
                454,
                f"{server} offers STARTTLS but no STARTTLS transport plugin is in use",
            )
            return wire, capabilities
        if not starttls:
            wire.event("STARTTLS not tried again: the policy chose plain text")
            return wire, capabilities

        reply = yield from wire.step(session.starttls(plan.timeouts))
        if reply.code != 220:
            _decide(plan, wire, "refused", reply.code, f"STARTTLS refused: {reply}")
            return wire, capabilities
        try:
            yield from wire.step(session.upgrade(plan.timeouts))
        except TLSError as exc:
            if exc.attack:
                raise
            kind: TLSFailureKind = "certificate" if exc.certificate else "handshake"
            _decide(plan, wire, kind, exc.code, exc.diagnostic)
            # Carry on without TLS: the failed handshake left this connection
            # unusable, so open a fresh plain one that does not try again.
            yield CLOSE
            return (yield from _establish(plan, hook, server, port, starttls=False))
        _announce_tls(plan, wire)
        return wire, (yield from wire.step(session.hello(plan.client, plan.timeouts)))
    except Exception:
        yield CLOSE
        raise


def _announce_tls(plan: ConnectionPlan, wire: Wire) -> None:
    tls = wire.tls_info
    if tls is None:
        return
    checked = "certificate verified" if tls.verified else "certificate NOT verified"
    wire.event(f"TLS established: {tls.version} {tls.cipher} ({tls.backend}, {checked})")
    if not plan.tls_verify:
        text = (
            "tls_verify=False: the server's certificate and host name are not "
            "checked; anyone on the path can read and change this session"
        )
        wire.event(f"WARNING: {text}")
        logger.warning("%s:%s: %s", wire.info.server, wire.info.port, text)
