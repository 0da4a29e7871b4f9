"""PLAIN, CRAM-MD5, DIGEST-MD5, EXTERNAL and ANONYMOUS, registered without pure-sasl.

The implementation (pure-sasl's mechanisms, with its bugs worked around) is
:mod:`smtplug_plugins._puresasl`, imported when one of these mechanisms is
first considered for a login (see :mod:`smtplug_plugins._lazy`).
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import SASLMechanism
from smtplug_plugins._lazy import LazyMechanism

MECHANISMS: tuple[LazyMechanism, ...] = tuple(
    LazyMechanism(
        name, strength, exposes, module="smtplug_plugins._puresasl", attribute="MECHANISMS"
    )
    for name, strength, exposes in (
        ("PLAIN", 10, True),
        ("CRAM-MD5", 40, False),
        ("DIGEST-MD5", 50, False),
        ("EXTERNAL", 5, False),
        ("ANONYMOUS", 0, False),
    )
)


@hookimpl
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:
    return list(MECHANISMS)
