"""Named TLS policies: ``opportunistic`` (the default) and ``require``.

A policy decides what happens when TLS cannot be set up with a server
(:class:`~smtplug.interfaces.TLSFailure`): ``"secure"`` gives the server up
and tries the next one, ``"insecure"`` carries on without TLS.

========================  ================  ===========
failure                   opportunistic     require
========================  ================  ===========
no STARTTLS offered       insecure          secure
no STARTTLS transport     insecure          secure
STARTTLS refused (454)    insecure          secure
handshake failed          insecure          secure
certificate not verified  **secure**        secure
========================  ================  ===========

``opportunistic`` is Tcllib's behaviour made safe: Tcllib ignores handshake
failures and verifies nothing; here a certificate that fails verification is
never downgraded to plain text silently (pass ``tls_verify=False`` or a
policy callable that says ``"insecure"`` to allow that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import TLSFailure, TLSPolicy

__all__ = ["Opportunistic", "Require"]


class Opportunistic:
    """TLS when it works; plain text when it cannot be had, except a bad certificate."""

    name = "opportunistic"

    def decide(self, failure: TLSFailure) -> Literal["secure", "insecure"]:
        return "secure" if failure.kind == "certificate" else "insecure"


class Require:
    """No TLS, no mail: every failure gives the server up."""

    name = "require"

    def decide(self, failure: TLSFailure) -> Literal["secure", "insecure"]:
        return "secure"


@hookimpl
def smtplug_register_tls_policies() -> Sequence[TLSPolicy]:
    return [Opportunistic(), Require()]
