"""SCRAM-SHA-1, SCRAM-SHA-256 and their -PLUS forms, registered without scramp.

The implementation (on scramp, with channel bindings) is
:mod:`smtplug_plugins._scram`, imported when a SCRAM mechanism is first
considered for a login (see :mod:`smtplug_plugins._lazy`).
"""

from __future__ import annotations

from collections.abc import Sequence

from smtplug.hookspecs import hookimpl
from smtplug.interfaces import SASLMechanism
from smtplug_plugins._lazy import LazyMechanism

MECHANISMS: tuple[LazyMechanism, ...] = tuple(
    LazyMechanism(name, strength, False, module="smtplug_plugins._scram", attribute="BY_NAME")
    for name, strength in (
        ("SCRAM-SHA-256-PLUS", 100),
        ("SCRAM-SHA-256", 90),
        ("SCRAM-SHA-1-PLUS", 80),
        ("SCRAM-SHA-1", 70),
    )
)


@hookimpl
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:
    return list(MECHANISMS)
