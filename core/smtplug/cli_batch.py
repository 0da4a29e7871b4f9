"""``smtplug send-many``: many ready messages from the shell, through a :class:`smtplug.Pool`.

Each FILE is one RFC 5322 message sent as it is (as ``smtplug send --message
FILE``); a directory stands for its regular files, sorted by name; ``-``
reads file names from stdin, one per line. The files are read one at a time,
as the pool takes them (a generator into :meth:`smtplug.Pool.send_many`), so
a batch of any size never sits in memory. One line per message on stdout,
in order, a summary on stderr, and an exit status that says the worst that
happened (see :data:`EPILOG`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, TextIO

import smtplug
from smtplug import InvalidInputError, Outcome, SMTPError
from smtplug.cli_send import (
    EXIT_NOT_SENT,
    EXIT_PARTIAL,
    EXIT_SENT,
    EXIT_TEMPORARY,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    UsageProblem,
    _refusals,
    _warnings_to,
    add_connection_options,
    connection_options,
)

__all__ = ["EXIT_INTERRUPTED", "add_send_many_parser", "exit_code_for_batch", "run_send_many"]

#: Interrupted (Ctrl-C): the messages in flight were finished, the rest not sent.
EXIT_INTERRUPTED = 130

#: The pool's connections unless ``--connections`` says otherwise.
DEFAULT_CONNECTIONS = 4

#: The progress line is redrawn at most this often (seconds), and once at the end.
PROGRESS_INTERVAL = 0.1

#: The clock of the progress line (a test may replace it).
_clock: Callable[[], float] = time.monotonic

#: What became of one message, for the output and the exit status.
Kind = Literal["sent", "partial", "temporary", "permanent", "unknown"]

DESCRIPTION = """\
Send many ready messages by SMTP over a pool of connections (smtplug.Pool,
send_many): each FILE is one RFC 5322 message, sent as it is (as with
'smtplug send --message FILE'); a DIRECTORY stands for its regular files,
sorted by name; '-' reads file names from stdin, one per line. The files are
read one at a time, as the pool takes them.

The envelope of each message comes from its own From, To, Cc and Bcc fields,
unless --from or --to are given (then they hold for every message). The
server, TLS and authentication options are those of 'smtplug send'.

Output: one line per message on stdout, in the order of the files
("FILE: sent to N recipients", "FILE: sent, refused: ...", "FILE: not sent
(temporary): ...", "FILE: not sent: ...", "FILE: delivery unknown: ..."), or
one JSON object per line with --json. A file that cannot be read, or is not
a message, is that message's outcome (not sent), not the end of the batch.
On stderr: a progress line when stderr is a terminal, and a summary line at
the end. Ctrl-C stops taking messages; those in flight are finished.
"""

EPILOG = f"""\
exit status (the first that applies, in this order):
  {EXIT_UNKNOWN:<3} the delivery of some message is unknown (the connection was lost
      after its end was sent): do not resend those blindly
  {EXIT_NOT_SENT:<3} else: some message was not sent, permanently (a 5xx reply, every
      recipient refused with at least one 5xx, a file that is not a message)
  {EXIT_TEMPORARY:<3} else: some message was not sent, temporarily (a 4xx reply, a lost
      connection, no server reachable): try those again later
  {EXIT_PARTIAL:<3} else: every message was sent, but some recipients were refused
      (only with --atleastone)
  {EXIT_SENT:<3} every message was sent to every recipient
  {EXIT_USAGE:<3} bad usage (options, pool options, no password): nothing was sent,
      no connection was opened
  {EXIT_INTERRUPTED:<3} interrupted (Ctrl-C): no new message was taken; those taken were
      finished and listed; a second Ctrl-C stops at once (those in flight
      are finished, not listed)

examples:
  # every message of outbox/ over 4 connections (the default), 10 a second
  smtplug send-many --server mail.example.org:587 --auth me@example.org \\
      --password-file ~/.smtp-password --rate 10 outbox/

  # file names from a program, the same envelope for each, JSON lines out
  find spool -name '*.eml' | smtplug send-many --server localhost --no-tls \\
      --from me@example.org --to list@example.org --json - > outcomes.jsonl

See docs/cli.md for more.
"""

#: The first line of a message: a header field ("Name:", RFC 5322 ftext).
_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


def add_send_many_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``send-many`` subcommand to the subparsers action ``sub``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "send-many",
        help="send many ready messages (files, directories) over a pool of connections; "
        "see 'smtplug send-many --help'",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "files",
        metavar="FILE",
        nargs="+",
        help="a message file; a directory: its regular files, sorted by name; "
        "'-': file names from stdin, one per line",
    )

    envelope = parser.add_argument_group("envelope")
    envelope.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help="the envelope sender of every message (MAIL FROM); '' for the null sender <>; "
        "default: each message's From",
    )
    envelope.add_argument(
        "--to",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="a recipient of every message (repeatable); default: each message's To, Cc and Bcc",
    )
    envelope.add_argument(
        "--atleastone",
        action="store_true",
        help="send each message to its accepted recipients even when some are refused",
    )

    pool = parser.add_argument_group("pool")
    pool.add_argument(
        "--connections",
        metavar="N",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help=f"connections open at most at once (default {DEFAULT_CONNECTIONS})",
    )
    pool.add_argument(
        "--max-per-connection",
        metavar="N",
        type=int,
        help="messages per connection, then a fresh one (default: no limit)",
    )
    pool.add_argument(
        "--rate",
        metavar="PER_SECOND",
        type=float,
        help="messages per second over all connections (default: no limit)",
    )
    pool.add_argument(
        "--rate-burst",
        metavar="N",
        type=int,
        help="how many may start at once after a pause (default 1; with --rate)",
    )
    pool.add_argument(
        "--retry",
        metavar="ATTEMPTS",
        type=int,
        help="tries per message in all, with backoff, for what is safe to try again "
        "(a 421, a lost connection or a 4xx before the end); default: no retry",
    )
    pool.add_argument(
        "--deadline",
        metavar="SECONDS",
        type=float,
        help="the most one message may take, all its attempts included",
    )

    add_connection_options(parser)

    output = parser.add_argument_group("output")
    loudness = output.add_mutually_exclusive_group()
    loudness.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message instead of a line (file, status, code, "
        "diagnostic, refused, attempts)",
    )
    loudness.add_argument("--quiet", action="store_true", help="print nothing but the summary line")
    parser.set_defaults(handler=run_send_many)
    return parser


# -- the files -----------------------------------------------------------------


def _listed(argument: str) -> Iterator[str]:
    """The file names a FILE or DIRECTORY argument stands for."""
    if os.path.isdir(argument):
        try:
            with os.scandir(argument) as entries:
                names = sorted(entry.name for entry in entries if entry.is_file())
        except OSError:
            yield argument  # (its outcome: cannot read)
            return
        for name in names:
            yield os.path.join(argument, name)
    else:
        yield argument


def _names(arguments: Sequence[str], stdin: TextIO) -> tuple[Iterator[str], int | None]:
    """Every file name, in order, and how many when known (no ``-``)."""
    if "-" not in arguments:
        names = [name for argument in arguments for name in _listed(argument)]
        return iter(names), len(names)

    def lazily() -> Iterator[str]:
        for argument in arguments:
            if argument != "-":
                yield from _listed(argument)
                continue
            for line in stdin:
                name = line.rstrip("\r\n")
                if name:
                    yield from _listed(name)

    return lazily(), None


#: A file up to this size is read whole (``bytes``: the quickest path); a
#: larger one (a regular file) is sent from the open file, streamed: a batch
#: then holds a few chunks of each message in flight, not whole files.
_READ_WHOLE = 1 << 20
#: What is read of a streamed file to see that it begins with a header field.
_PEEK = 1000


def _read(name: str) -> bytes | BinaryIO:
    """The message in file ``name``: its bytes, or the open file (at its
    start) when it is larger than :data:`_READ_WHOLE`;
    :class:`InvalidInputError` when it cannot be read or is not a message."""
    try:
        handle = open(name, "rb")  # noqa: SIM115 (a large one is closed once reported)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {name!r}: {exc.strerror or exc}") from exc
    try:
        if os.fstat(handle.fileno()).st_size > _READ_WHOLE and handle.seekable():
            _check_start(name, handle.read(_PEEK))
            handle.seek(0)
            return handle
        data = handle.read()
    except OSError as exc:
        handle.close()
        raise InvalidInputError(f"cannot read {name!r}: {exc.strerror or exc}") from exc
    except BaseException:
        handle.close()
        raise
    handle.close()
    _check_start(name, data)
    return data


def _check_start(name: str, start: bytes) -> None:
    if not _FIELD.match(start):
        what = "empty" if not start else "does not begin with a header field"
        raise InvalidInputError(f"{name!r} is not an RFC 5322 message ({what})")


@dataclass(frozen=True, slots=True)
class _Taken:
    """A file the batch took: sent through the pool (``error`` None), or its
    outcome known already (``error``: it could not be read)."""

    name: str
    error: InvalidInputError | None
    handle: BinaryIO | None = None  # a large file, streamed: closed once reported

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


class _Files:
    """The messages the pool takes, read one at a time; :attr:`taken` keeps
    every file taken, in order, those the pool never saw included."""

    def __init__(self, names: Iterator[str]) -> None:
        self._names = names
        self.taken: deque[_Taken] = deque()
        self.stopped = False  # (a first Ctrl-C: no file is taken after it)

    def messages(self) -> Iterator[bytes | BinaryIO]:
        for name in self._names:
            if self.stopped:
                return
            try:
                data = _read(name)
            except InvalidInputError as exc:
                self.taken.append(_Taken(name, exc))
                continue
            handle = None if isinstance(data, bytes) else data
            self.taken.append(_Taken(name, None, handle))
            yield data

    def close(self) -> None:
        """Close the files still open (taken, their outcome not reported)."""
        for taken in self.taken:
            taken.close()


@contextlib.contextmanager
def _first_interrupt_stops(files: _Files) -> Iterator[None]:
    """While the batch runs: a first Ctrl-C (SIGINT) takes no new file, and
    the messages already taken are finished and listed with their own
    outcomes; a second one is a KeyboardInterrupt as usual. Only in the main
    thread (where Python runs signal handlers); elsewhere Ctrl-C is left as
    it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: object) -> None:
        if files.stopped:
            raise KeyboardInterrupt
        files.stopped = True

    try:
        previous = signal.signal(signal.SIGINT, first)
    except (ValueError, OSError):  # (no signals here: an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- outcomes ------------------------------------------------------------------


def _kind(outcome: Outcome) -> Kind:
    result, error = outcome.result, outcome.error
    if result is not None:
        if result.accepted:
            return "partial" if result else "sent"
        return "temporary" if all(r.transient for r in result) else "permanent"
    assert error is not None
    if outcome.status == "unknown":
        return "unknown"
    return "temporary" if error.transient else "permanent"


def _line(name: str, outcome: Outcome, kind: Kind) -> str:
    result, error = outcome.result, outcome.error
    said = "" if error is None else f"{type(error).__name__}: {error.code} {error.diagnostic}"
    if result is not None:
        if kind == "sent":
            count = len(result.recipients)
            return f"{name}: sent to {count} recipient{'' if count == 1 else 's'}"
        said = f"recipients refused: {_refusals(result)}"
        if kind == "partial":
            return f"{name}: sent, refused: {_refusals(result)}"
    if kind == "unknown":
        return f"{name}: delivery unknown: {said}"
    if kind == "temporary":
        return f"{name}: not sent (temporary): {said}"
    return f"{name}: not sent: {said}"


def _json(name: str, outcome: Outcome) -> str:
    result, error = outcome.result, outcome.error
    refused = [] if result is None else list(result)
    record = {
        "file": name,
        "status": outcome.status,
        "code": None if error is None else error.code,
        "diagnostic": None if error is None else error.diagnostic,
        "error": None if error is None else type(error).__name__,
        "refused": [
            {"address": r.address, "code": r.code, "diagnostic": r.diagnostic} for r in refused
        ],
        "attempts": None if result is None else result.attempts,
    }
    return json.dumps(record, ensure_ascii=False)


def exit_code_for_batch(kinds: Counter[Kind]) -> int:
    """The exit status of a batch (see :data:`EPILOG`): the worst kind wins."""
    if kinds["unknown"]:
        return EXIT_UNKNOWN
    if kinds["permanent"]:
        return EXIT_NOT_SENT
    if kinds["temporary"]:
        return EXIT_TEMPORARY
    if kinds["partial"]:
        return EXIT_PARTIAL
    return EXIT_SENT


def _counts(kinds: Counter[Kind]) -> tuple[int, int, int]:
    """(sent, not sent, delivery unknown)."""
    return (
        kinds["sent"] + kinds["partial"],
        kinds["temporary"] + kinds["permanent"],
        kinds["unknown"],
    )


def _summary(kinds: Counter[Kind]) -> str:
    sent, not_sent, unknown = _counts(kinds)
    total = sent + not_sent + unknown
    line = f"{total} message{'' if total == 1 else 's'}: {sent} sent"
    if kinds["partial"]:
        line += f" ({kinds['partial']} with refused recipients)"
    line += f", {not_sent} not sent"
    if kinds["temporary"]:
        line += f" ({kinds['temporary']} temporarily)"
    return line + f", {unknown} delivery unknown"


class _Progress:
    """The ``\\r`` progress line on a terminal: ``[  120/10000] 118 sent, 1 not
    sent, 1 unknown``, redrawn at most every :data:`PROGRESS_INTERVAL`
    seconds, and for the last message."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self._stream = stream
        self._total = total
        self._digits = len(str(total)) if total is not None else 5
        self._width = 0
        self._drawn_at: float | None = None
        self._drawn: tuple[int, int, int] | None = None
        self._last: tuple[int, int, int] = (0, 0, 0)

    def update(self, kinds: Counter[Kind]) -> None:
        self._last = counts = _counts(kinds)
        now = _clock()
        due = self._drawn_at is None or now - self._drawn_at >= PROGRESS_INTERVAL
        if due or sum(counts) == self._total:
            self._draw(counts, now)

    def _draw(self, counts: tuple[int, int, int], now: float) -> None:
        sent, not_sent, unknown = counts
        total = "?" if self._total is None else str(self._total)
        line = (
            f"\r[{sum(counts):>{self._digits}}/{total}] "
            f"{sent} sent, {not_sent} not sent, {unknown} unknown"
        )
        self._stream.write(line.ljust(self._width))
        self._stream.flush()
        self._width = max(self._width, len(line))
        self._drawn_at, self._drawn = now, counts

    def clear(self) -> None:
        """Draw the last count if it was not, then clear the line."""
        if self._drawn is None:
            return
        if self._drawn != self._last:
            self._draw(self._last, _clock())
        self._stream.write("\r" + " " * (self._width - 1) + "\r")
        self._stream.flush()
        self._drawn = None


# -- the command ---------------------------------------------------------------


def _pool_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pool's own options (checked by :class:`smtplug.Pool`)."""
    options: dict[str, Any] = {
        "max_connections": args.connections,
        "max_messages_per_connection": args.max_per_connection,
        "rate_limit": args.rate,
        "deadline": args.deadline,
    }
    if args.rate_burst is not None:
        options["rate_burst"] = args.rate_burst
    if args.retry is not None:
        options["retry"] = smtplug.Retry(attempts=args.retry)
    return options


def run_send_many(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    stdin: TextIO | None = None,
    stdin_tty: bool | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``smtplug send-many`` with parsed ``args``; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if stdin is None:
        stdin = sys.stdin
    if stdin_tty is None:
        stdin_tty = sys.stdin.isatty()
    try:
        try:
            connection = connection_options(args, can_prompt=stdin_tty and "-" not in args.files)
        except UsageProblem as exc:
            parser.error(str(exc))
        # Bad pool options: refused here, before any connection.
        pool = smtplug.Pool(**connection, **_pool_options(args))
    except SMTPError as exc:
        print(f"smtplug: {type(exc).__name__}: {exc.code} {exc.diagnostic}", file=err, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    kinds: Counter[Kind] = Counter()
    progress: _Progress | None = None
    interrupted = False
    with pool, _warnings_to(None if args.quiet else err):
        try:
            names, total = _names(args.files, stdin)
            if not args.quiet and err.isatty():
                progress = _Progress(err, total)
            files = _Files(names)

            def report(name: str, outcome: Outcome) -> None:
                kind = _kind(outcome)
                if args.json:
                    print(_json(name, outcome), file=out, flush=True)
                elif not args.quiet:
                    print(_line(name, outcome, kind), file=out, flush=True)
                kinds[kind] += 1  # (after its line: the summary counts what was shown)
                if progress is not None:
                    progress.update(kinds)

            def unread() -> None:  # (the files before the pool's next message)
                while files.taken and files.taken[0].error is not None:
                    taken = files.taken.popleft()
                    report(taken.name, Outcome(-1, None, taken.error))

            outcomes = pool.send_many(
                files.messages(),
                originator=args.sender,
                recipients=args.to or None,
                atleastone=args.atleastone,
            )
            try:
                with _first_interrupt_stops(files):
                    for outcome in outcomes:
                        unread()
                        taken = files.taken.popleft()
                        try:
                            report(taken.name, outcome)
                        finally:
                            taken.close()
                    unread()
            finally:
                close = getattr(outcomes, "close", None)  # (a generator's)
                if close is not None:
                    close()  # (on Ctrl-C: the messages in flight are finished)
                files.close()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if progress is not None:
                progress.clear()
    if interrupted:
        print(
            f"smtplug: interrupted: {_summary(kinds)}; the messages in flight were "
            "finished (not listed), the others not sent",
            file=err,
            flush=True,
        )
        return EXIT_INTERRUPTED
    if files.stopped:
        print(
            f"smtplug: interrupted: {_summary(kinds)}; every message taken was finished "
            "and is listed, the files after it were not sent",
            file=err,
            flush=True,
        )
        return EXIT_INTERRUPTED
    print(f"smtplug: {_summary(kinds)}", file=err, flush=True)
    return exit_code_for_batch(kinds)
