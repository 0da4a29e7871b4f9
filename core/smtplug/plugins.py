"""Finding plugins and building the registry one call works with.

Theory of operation: installed plugins are the modules named by entry points in
the group ``smtplug`` (built-ins included: ``smtplug_plugins.plain`` is found
exactly as a third party's plugin is). They are imported once per process and
remembered. Each call to :func:`smtplug.sendmessage` builds a fresh
:class:`pluggy.PluginManager` from them, minus the ones the caller blocked,
plus the caller's extra plugin objects, then asks the register-style hooks
for transports, TLS backends, SASL mechanisms and TLS policies and indexes
them by name. Nothing global is mutated per call, so concurrent calls with
different plugins do not see each other's.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import pluggy

from smtplug import hookspecs
from smtplug.errors import InvalidInputError, PluginError
from smtplug.interfaces import AsyncTransport, SASLMechanism, TLSBackend, TLSPolicy, Transport

__all__ = ["ENTRY_POINT_GROUP", "InstalledPlugin", "Registry", "build_registry", "installed"]

ENTRY_POINT_GROUP = "smtplug"


@dataclass(frozen=True, slots=True)
class InstalledPlugin:
    """One plugin found through the ``smtplug`` entry-point group."""

    name: str
    value: str  # "module" or "module:attribute", as in the entry point
    distribution: str
    plugin: object


@functools.cache
def installed() -> tuple[InstalledPlugin, ...]:
    """Every plugin installed in this environment, imported once per process.

    An entry point that fails to load raises :class:`PluginError` naming it:
    a broken plugin is never skipped silently.
    """
    found: dict[str, InstalledPlugin] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            # The same distribution seen twice on sys.path (e.g. an editable
            # install next to a build directory) is harmless; two different
            # plugins claiming one name is not.
            if found[ep.name].value == ep.value:
                continue
            raise PluginError(
                f"two plugins are installed under the name {ep.name!r}: "
                f"{found[ep.name].value} and {ep.value}"
            )
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        dist = ep.dist.name if ep.dist is not None else "?"
        found[ep.name] = InstalledPlugin(ep.name, ep.value, dist, plugin)
    return tuple(found.values())


T = TypeVar("T")


def _index(kind: str, results: Iterable[Sequence[T]]) -> Mapping[str, T]:
    table: dict[str, T] = {}
    for batch in results:
        for obj in batch:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"a plugin registered a {kind} without a name: {obj!r}")
            key = name.upper() if kind == "SASL mechanism" else name
            if key in table:
                raise PluginError(f"two plugins register the {kind} {name!r}")
            table[key] = obj
    return MappingProxyType(table)


@dataclass(frozen=True, slots=True)
class Registry:
    """What one call may use: the plugin manager and the objects registered."""

    manager: pluggy.PluginManager
    transports: Mapping[str, Transport]
    tls_backends: Mapping[str, TLSBackend]
    sasl_mechanisms: Mapping[str, SASLMechanism]
    tls_policies: Mapping[str, TLSPolicy]
    async_transports: Mapping[str, AsyncTransport]

    @property
    def hook(self) -> Any:
        return self.manager.hook


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def build_registry(
    extra: Sequence[object] = (),
    block: Iterable[str] = (),
) -> Registry:
    """A registry of the installed plugins less ``block``, plus ``extra``.

    Without ``extra`` the registry is built once per set of blocked names and
    reused (it is immutable); with ``extra`` it is built afresh.
    """
    if not extra:
        return _shared_registry(frozenset(block))
    return _build_registry(extra, block)


@functools.cache
def _shared_registry(block: frozenset[str]) -> Registry:
    return _build_registry((), block)


def _build_registry(
    extra: Sequence[object],
    block: Iterable[str],
) -> Registry:
    """A registry of the installed plugins less ``block``, plus ``extra``.

    ``block`` names plugins by entry-point name (``"plain"``); naming one that
    is not installed is an :class:`InvalidInputError`, so a typo cannot leave
    a plugin active. ``extra`` are plugin objects (modules, classes or
    instances with ``@hookimpl`` methods) for this registry only.
    """
    manager = new_manager()
    plugins = installed()
    blocked = set(block)
    unknown = blocked - {p.name for p in plugins}
    if unknown:
        raise InvalidInputError(
            f"block_plugins names plugins that are not installed: {sorted(unknown)}; "
            f"installed: {sorted(p.name for p in plugins)}"
        )
    for entry in plugins:
        if entry.name not in blocked:
            manager.register(entry.plugin, name=entry.name)
    for index, obj in enumerate(extra):
        try:
            manager.register(obj, name=f"extra-{index}-{id(obj):x}")
        except ValueError as exc:
            raise InvalidInputError(f"plugins[{index}] cannot be registered: {exc}") from exc
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown hook: {exc}") from exc

    hook = manager.hook
    return Registry(
        manager=manager,
        transports=_index("transport", hook.smtplug_register_transports()),
        tls_backends=_index("TLS backend", hook.smtplug_register_tls_backends()),
        sasl_mechanisms=_index("SASL mechanism", hook.smtplug_register_sasl_mechanisms()),
        tls_policies=_index("TLS policy", hook.smtplug_register_tls_policies()),
        async_transports=_index("async transport", hook.smtplug_register_async_transports()),
    )
