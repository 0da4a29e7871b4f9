"""Settling TLS with a server, in one place: STARTTLS, the handshake, the policy.

Theory of operation. :func:`settle` (a program) runs after the greeting and
EHLO on a plain connection when ``usetls`` asks for TLS: when offered,
STARTTLS (:func:`starttls_step`), a 220, the handshake (:func:`upgrade_step`:
the :class:`~smtplug.wire.Wire` refuses it if the server sent anything after
the 220, a response injection; the driver has the stream's ``start_tls`` do
it), and EHLO again, every earlier capability forgotten. Whenever TLS cannot
be had (not offered, no STARTTLS transport, refused, failed handshake, failed
certificate check) the TLS policy decides (:func:`decide`): ``"secure"``
gives the server up, ``"insecure"`` carries on in plain text, on the same
connection, or after a failed handshake on a fresh plain one. An attack
(injection) is never downgraded. :func:`announce` reports what TLS
negotiated (implicit TLS too). :class:`CallablePolicy` is Tcllib's
``-tlspolicy`` command as a policy.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Literal

from smtplug import events, session
from smtplug.actions import Action, Upgrade
from smtplug.errors import TLSError
from smtplug.interfaces import TLSFailure, TLSFailureKind
from smtplug.observe import logger
from smtplug.options import TLSPolicyCallable
from smtplug.protocol import Capabilities, Reply, commands
from smtplug.session import Timeouts
from smtplug.wire import Wire

if TYPE_CHECKING:
    from smtplug.connect import ConnectionPlan

__all__ = ["CallablePolicy", "announce", "decide", "settle", "starttls_step", "upgrade_step"]


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


def starttls_step(timeouts: Timeouts) -> Generator[Action, Reply | None, Reply]:
    """STARTTLS; the caller reads the reply (220: go on with :func:`upgrade_step`;
    anything else is a refusal for the TLS policy to judge), except a 421."""
    return (yield from session._tolerant(commands.starttls(), "STARTTLS", timeouts))


def upgrade_step(timeouts: Timeouts) -> Generator[Action, Reply | None, None]:
    """The TLS handshake after a 220 to STARTTLS (RFC 3207).

    Every capability learnt before it is void: the caller sends EHLO again.
    """
    yield Upgrade(timeouts.command)


def settle(
    plan: ConnectionPlan, wire: Wire, capabilities: Capabilities, *, starttls: bool
) -> Generator[Any, Any, Capabilities | None]:
    """A program: STARTTLS on a greeted plain session, as the policy wants.

    Returns the capabilities to go on with (after TLS: re-read by a new EHLO;
    without: the old ones, the policy allowing it), or None when the handshake
    failed and the policy allows plain text: the connection is unusable then,
    and the caller opens a fresh one with ``starttls=False``. Raises
    :class:`TLSError` when the policy says no, and for an attack.
    """
    server = wire.info.server
    if not capabilities.starttls:
        decide(plan, wire, "absent", 454, f"{server} does not offer STARTTLS")
        return capabilities
    if not wire.can_start_tls:
        decide(
            plan,
            wire,
            "unavailable",
            454,
            f"{server} offers STARTTLS but no STARTTLS transport plugin is in use",
        )
        return capabilities
    if not starttls:
        wire.event(events.TLSNotRetried())
        return capabilities

    reply = yield from wire.step(starttls_step(plan.timeouts))
    if reply.code != 220:
        decide(plan, wire, "refused", reply.code, f"STARTTLS refused: {reply}")
        return capabilities
    try:
        yield from wire.step(upgrade_step(plan.timeouts))
    except TLSError as exc:
        if exc.attack:
            raise
        kind: TLSFailureKind = "certificate" if exc.certificate else "handshake"
        decide(plan, wire, kind, exc.code, exc.diagnostic)
        return None  # a fresh plain connection, please
    announce(plan, wire)
    return (yield from wire.step(session.hello(plan.client, plan.timeouts, plan.dialect)))


def decide(
    plan: ConnectionPlan,
    wire: Wire,
    kind: TLSFailureKind,
    code: int,
    diagnostic: str,
) -> None:
    """Ask the policy; raise :class:`TLSError` when it says ``"secure"``."""
    decision = plan.policy.decide(TLSFailure(kind, code, diagnostic))
    wire.event(events.TLSNotUsed(kind, code, diagnostic, plan.policy.name, decision))
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


def announce(plan: ConnectionPlan, wire: Wire) -> None:
    tls = wire.tls_info
    if tls is None:
        return
    wire.event(events.TLSEstablished(tls))
    if not plan.tls_verify:
        wire.event(events.TLSVerificationOff())
        logger.warning(
            "%s:%s: %s", wire.info.server, wire.info.port, events.TLSVerificationOff.text
        )
