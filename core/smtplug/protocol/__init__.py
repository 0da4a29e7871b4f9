"""The sans-IO SMTP protocol engine: bytes in, values out; values in, bytes out.

Theory of operation
-------------------
Nothing in this package opens a socket, reads, writes, sleeps or keeps time.
It only translates, in the style of h11:

* :class:`ReplyParser` turns bytes received from a server into :class:`Reply`
  values, enforcing :class:`ReplyLimits` against a hostile server;
* :class:`Capabilities` interprets the reply to EHLO (or HELO);
* :mod:`~smtplug.protocol.commands` turns validated arguments into the exact
  command lines to send, refusing anything that could inject a command;
* :class:`DataEncoder` (:mod:`~smtplug.protocol.data`) turns a message body
  into the DATA payload: CRLF line endings, dot-stuffing, terminator.

The code that owns a connection (a driver) moves bytes between these pieces
and the network. Keeping the protocol free of I/O makes it testable with plain
byte strings and reusable under any I/O model.
"""

from smtplug.protocol import capabilities, commands, data, replies
from smtplug.protocol.capabilities import Capabilities
from smtplug.protocol.commands import check_address
from smtplug.protocol.data import DataEncoder, decode_data, encode_data, normalise_line_endings
from smtplug.protocol.replies import Reply, ReplyLimits, ReplyParser, enhanced_status, escape_text

__all__ = [
    "Capabilities",
    "DataEncoder",
    "Reply",
    "ReplyLimits",
    "ReplyParser",
    "capabilities",
    "check_address",
    "commands",
    "data",
    "decode_data",
    "encode_data",
    "enhanced_status",
    "escape_text",
    "normalise_line_endings",
    "replies",
]
