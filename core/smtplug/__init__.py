"""smtplug: Tcllib's ``smtp::sendmessage`` re-created in Python, on pluggy plugins.

>>> import smtplug
>>> refused = smtplug.sendmessage(msg, recipients="someone@example.org")  # doctest: +SKIP
"""

from smtplug import events
from smtplug.api import Client, sendmessage
from smtplug.errors import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    DeadlineExceededError,
    DeliveryUnknownError,
    InvalidInputError,
    MessageTooLargeError,
    PluginError,
    ProtocolError,
    ResponseError,
    ServerFailure,
    SMTPError,
    TLSError,
    UnknownOptionError,
)
from smtplug.hookspecs import hookimpl, hookspec
from smtplug.interfaces import ConnectionInfo
from smtplug.pool import Outcome, Pool
from smtplug.protocol import Reply
from smtplug.protocol.dsn import DSN
from smtplug.results import RefusedRecipient, SendResult
from smtplug.retry import Retry
from smtplug.session import Timeouts

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from smtplug.aio import AsyncClient, asendmessage
    from smtplug.pool import AsyncPool


def __getattr__(name: str) -> object:
    # The asyncio API is imported when first used: asyncio costs a blocking
    # program about 10 ms at import.
    if name in ("AsyncClient", "asendmessage"):
        from smtplug import aio

        return getattr(aio, name)
    if name == "AsyncPool":
        from smtplug import pool

        return pool.AsyncPool
    raise AttributeError(f"module 'smtplug' has no attribute {name!r}")


__all__ = [
    "DSN",
    "AsyncClient",
    "AsyncPool",
    "AuthenticationError",
    "Client",
    "ConnectError",
    "ConnectionInfo",
    "ConnectionLostError",
    "DeadlineExceededError",
    "DeliveryUnknownError",
    "InvalidInputError",
    "MessageTooLargeError",
    "Outcome",
    "PluginError",
    "Pool",
    "ProtocolError",
    "RefusedRecipient",
    "Reply",
    "ResponseError",
    "Retry",
    "SMTPError",
    "SendResult",
    "ServerFailure",
    "TLSError",
    "Timeouts",
    "UnknownOptionError",
    "__version__",
    "asendmessage",
    "events",
    "hookimpl",
    "hookspec",
    "sendmessage",
]
