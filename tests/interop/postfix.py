"""Drive the throwaway Postfix instance of ``postfix.sh`` from Python.

``Postfix().start(directory)`` runs ``postfix.sh start DIR`` (installing the
Debian packages on first use), reads the ``KEY=VALUE`` lines it prints and
exposes them as attributes; ``stop()`` stops that instance. Mail accepted by
any of the three ports ends up in one Maildir, read with :meth:`messages`.

Errors: :class:`PostfixUnavailable` when the harness cannot run here at all
(not root, packages not installable: callers skip), :class:`PostfixError`
for anything else that went wrong.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SCRIPT",
    "Postfix",
    "PostfixError",
    "PostfixUnavailable",
]

SCRIPT = Path(__file__).with_name("postfix.sh")
# A first start installs Debian packages: allow for a slow mirror.
START_TIMEOUT = 600.0
STOP_TIMEOUT = 60.0
# postfix.sh exit codes meaning "cannot run on this machine".
_EXIT_NOT_ROOT = 3
_EXIT_NO_PACKAGES = 4


class PostfixError(RuntimeError):
    """The harness script failed."""


class PostfixUnavailable(PostfixError):
    """Postfix cannot be run here (not root, or the packages cannot be installed)."""


def _run(action: str, directory: Path, timeout: float, env: Mapping[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), action, str(directory)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"postfix.sh {action} {directory} took more than {timeout} s") from exc
    if done.returncode in (_EXIT_NOT_ROOT, _EXIT_NO_PACKAGES):
        raise PostfixUnavailable(done.stderr.strip())
    if done.returncode != 0:
        raise PostfixError(
            f"postfix.sh {action} {directory} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def _parse_env(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("POSTFIX_"):
            values[key] = value
    return values


class Postfix:
    """One running instance of the harness; attributes come from ``postfix.sh env``."""

    directory: Path
    host: str
    plain_port: int
    submission_port: int
    smtps_port: int
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    maildir: Path
    user: str
    password: str
    realm: str
    log: Path
    refused_domain: str
    tempfail_domain: str
    config_dir: Path

    def __init__(self) -> None:
        self._started = False

    def start(
        self,
        directory: Path | str,
        *,
        plain_port: int | None = None,
        submission_port: int | None = None,
        smtps_port: int | None = None,
    ) -> Postfix:
        """Start (or restart) the instance in ``directory``; returns self.

        A port left out comes from the environment
        (``SMTPLUG_POSTFIX_PLAIN_PORT`` ...) or the script's default.
        """
        self.directory = Path(directory).resolve()
        env = {
            name: str(port)
            for name, port in (
                ("SMTPLUG_POSTFIX_PLAIN_PORT", plain_port),
                ("SMTPLUG_POSTFIX_SUBMISSION_PORT", submission_port),
                ("SMTPLUG_POSTFIX_SMTPS_PORT", smtps_port),
            )
            if port is not None
        }
        try:
            self._load(_run("start", self.directory, START_TIMEOUT, env))
        except PostfixUnavailable:
            raise
        except PostfixError:
            # It may have got as far as starting a master: do not leave it.
            with contextlib.suppress(PostfixError):
                _run("stop", self.directory, STOP_TIMEOUT)
            raise
        self._started = True
        return self

    def stop(self) -> None:
        """Stop the instance; doing it twice is fine."""
        if self._started:
            self._started = False
            _run("stop", self.directory, STOP_TIMEOUT)

    def refresh(self) -> None:
        """Re-read the attributes from ``postfix.sh env``."""
        self._load(_run("env", self.directory, STOP_TIMEOUT))

    def _load(self, text: str) -> None:
        env = _parse_env(text)
        try:
            self.host = env["POSTFIX_HOST"]
            self.plain_port = int(env["POSTFIX_PLAIN_PORT"])
            self.submission_port = int(env["POSTFIX_SUBMISSION_PORT"])
            self.smtps_port = int(env["POSTFIX_SMTPS_PORT"])
            self.ca = env["POSTFIX_CA"]
            self.server_cert = env["POSTFIX_SERVER_CERT"]
            self.server_key = env["POSTFIX_SERVER_KEY"]
            self.client_cert = env["POSTFIX_CLIENT_CERT"]
            self.client_key = env["POSTFIX_CLIENT_KEY"]
            self.maildir = Path(env["POSTFIX_MAILDIR"])
            self.user = env["POSTFIX_USER"]
            self.password = env["POSTFIX_PASSWORD"]
            self.realm = env["POSTFIX_REALM"]
            self.log = Path(env["POSTFIX_LOG"])
            self.refused_domain = env["POSTFIX_REFUSED_DOMAIN"]
            self.tempfail_domain = env["POSTFIX_TEMPFAIL_DOMAIN"]
            self.config_dir = Path(env["POSTFIX_CONFIG_DIR"])
        except (KeyError, ValueError) as exc:
            raise PostfixError(f"postfix.sh printed no usable {exc}: {text!r}") from exc

    # -- the Maildir -------------------------------------------------------

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if folder.is_dir():
                files.extend(path for path in folder.iterdir() if path.is_file())
        # Maildir names start with the delivery time in seconds, then a
        # unique part: sorting by (mtime, name) gives delivery order.
        return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def messages(self) -> list[bytes]:
        """Every delivered message (Maildir new/ and cur/), oldest first."""
        return [path.read_bytes() for path in self._files()]

    def clear(self) -> None:
        """Remove every delivered message (the Maildir itself stays)."""
        for path in self._files():
            path.unlink(missing_ok=True)

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """Wait until at least ``count`` messages were delivered; returns them all.

        Postfix delivers asynchronously (smtpd queues, qmgr hands the message
        to virtual), so a message shows up shortly after the client's 250.
        Raises :class:`PostfixError` with the log's tail after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise PostfixError(
                    f"{len(found)} of {count} messages delivered within {timeout} s;"
                    f" log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_offset(self) -> int:
        """The log's size now: pass it to :meth:`wait_for_log` to look only after it."""
        try:
            return len(self.log.read_text(errors="replace"))
        except OSError:
            return 0

    def wait_for_log(self, text: str, offset: int = 0, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log after ``offset``; returns that part.

        Postfix's daemons hand their lines to postlogd, which writes them
        asynchronously: a line about a session the client has finished with
        may land a moment later. Raises :class:`PostfixError` after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                since = self.log.read_text(errors="replace")[offset:]
            except OSError:
                since = ""
            if text in since:
                return since
            if time.monotonic() >= deadline:
                raise PostfixError(
                    f"{text!r} not logged within {timeout} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of Postfix's log, for failure messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])
