"""The drivers: they perform a program's actions (:mod:`smtplug.actions`).

:mod:`~smtplug.drivers.blocking` over blocking streams (:class:`smtplug.Client`,
:func:`smtplug.sendmessage`), :mod:`~smtplug.drivers.aio` over asyncio streams
(:class:`smtplug.AsyncClient`, :func:`smtplug.asendmessage`). Each owns one
current connection at a time and only moves bytes and keeps time: what the
bytes mean is the :class:`~smtplug.wire.Wire`'s, what to do next the
program's.
"""
