"""The examples of every page (docs/*.md and README.md) run, as written.

Every ```python and ```sh block of a page is a test, ``<page>:<lang>-<n>``
(``index.md:python-3`` is the third python block of docs/index.md). A block
is run as the page shows it; what the runner adds is listed here.

Markers: HTML comments on the lines right before a fence (several may be
stacked):

- ``<!-- not run: REASON -->``: the block is not run (a settings fragment
  of another program, an install command ...); ``test_markers`` lists
  these and fails on one without a reason, and on a page whose python
  blocks are all marked.
- ``<!-- sends nothing: REASON -->``: the block runs, but is not expected
  to send a message (it builds objects, defines a plugin module ...).
- ``<!-- server offers: LINE, ... -->``: the runner's server offers these
  EHLO lines too, after TLS; an ``AUTH ...`` line replaces its own
  (``AUTH LOGIN PLAIN XOAUTH2 OAUTHBEARER`` for an OAuth example).

A python block runs in a fresh namespace holding this prelude, the names
the docs use without defining them:

- ``smtplug`` and ``EmailMessage`` (``email.message``);
- ``msg`` and ``message``: a small EmailMessage from alice@example.com to
  bob@example.org; ``messages``: three of them; ``body_text``: a str body;
- ``secret`` and ``password``: a password string;
- ``big_file``: a small message in a file opened ``"rb"`` (not big: the
  examples only show that a file is accepted);
- ``credentials``: a stand-in for google-auth credentials (``token``,
  ``refresh()``);
- ``server_side_context``: a server-side ``ssl.SSLContext`` with the test
  certificate of tests/tlsfixtures.py.

Top-level ``await`` / ``async with`` run in a coroutine, with asyncio.run.

Every connection a block makes goes to a local ScriptedServer the runner
started, whatever host and port the block names: the connect functions of
the built-in transports (``open_socket`` of plugins/smtplug_plugins/_sockets.py,
as bound in plain.py, starttls.py and implicit_tls.py, and ``open_connection``
of _aio.py) are monkeypatched for the test, so the network is never used.
A connection to a ScriptedServer that the block started itself (docs/testing.md)
goes where it asks. The runner's server offers what the examples need:
STARTTLS, then PIPELINING, 8BITMIME, SIZE, DSN, ENHANCEDSTATUSCODES and
AUTH PLAIN LOGIN; an implicit-TLS transport (``tlsimport=True``) reaches a
second one with TLS from the first byte. Its certificate is issued by the
test CA for whatever host name the client asks for (SNI), and the client
trusts the test CA: ``smtplug.api.TLSOptions`` defaults ``cafile`` to it, and
the placeholder paths of ``CA_PLACEHOLDERS`` in a block name it too. So
certificates and host names are verified, as on a real server.

After a block ran, some server (the runner's, or one the block started) must
have recorded a complete transaction, unless the block is marked
``sends nothing``. A block that defines Django settings (``MAILERS``,
``EMAIL_*``, ``SMTPLUG_OPTIONS``: docs/django.md) is a settings.py fragment:
Django is configured with it (tests/django_settings.py) and one message is
sent through the backend it configures; that message must arrive.

A ```sh block runs only when it uses the docs' local test server (it names
127.0.0.1:8025); any other must be marked ``not run`` (an install command, a
real server), and fails unrun otherwise. It runs with bash in a temporary
directory, ``smtplug`` being ``python -m smtplug`` of this interpreter,
against a ScriptedServer that answers as the docs' local test server
(``aiosmtpd -n -l 127.0.0.1:8025``: no TLS, ``250 OK``), whose port
replaces 8025. What the page states after a
command is checked: ``# smtplug: ...`` comment lines are its stderr, line by
line (``...`` matches anything), ``# > ...`` lines the stdout of an
``smtplug send-many`` (the only command here that prints on stdout; any
other's stdout must stay empty), and ``echo $?  # N`` its exit status; a
command whose status the page does not state must exit 0.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import contextvars
import inspect
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import smtplug
import smtplug.api
import smtplug_plugins._aio as aio_module
import smtplug_plugins._sockets as sockets_module
import smtplug_plugins.implicit_tls as implicit_tls_module
import smtplug_plugins.lmtp as lmtp_module
import smtplug_plugins.plain as plain_module
import smtplug_plugins.starttls as starttls_module
from smtplug.interfaces import TLSOptions
from smtplug.testing import ScriptedServer
from tlsfixtures import GOOD_IDENTITIES, PEMCert, server_context, tls_ca, write_files

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]

#: Paths the docs use for a private CA: a block's literal naming one names
#: the test CA instead.
CA_PLACEHOLDERS = ("/etc/ssl/my-ca.pem", "/etc/ssl/internal-ca.pem")

#: The EHLO keywords of the runner's server, before and after STARTTLS.
CAPABILITIES = ["PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN"]
TLS_CAPABILITIES = [*CAPABILITIES, "AUTH PLAIN LOGIN"]

#: The docs' local test server (docs/cli.md), replaced by a ScriptedServer.
LOCAL_SERVER = "127.0.0.1:8025"

#: What the docs' local test server (aiosmtpd 1.4, ``aiosmtpd -n``) offers.
AIOSMTPD_CAPABILITIES = ["SIZE 33554432", "8BITMIME", "SMTPUTF8", "HELP"]

DJANGO_SETTINGS = re.compile(r"MAILERS|EMAIL_\w+|SMTPLUG_OPTIONS")

LANGUAGES = {"python": "python", "sh": "sh", "bash": "sh"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(not run|sends nothing|server offers)\s*(:?)\s*(.*?)\s*-->\s*$")


# --- the pages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str  # "python" or "sh"
    number: int  # 1-based, per language within the page
    line: int  # the line of the opening fence (1-based)
    code: str
    markers: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.lang}-{self.number}"

    def marker(self, kind: str) -> str | None:
        return next((reason for k, reason in self.markers if k == kind), None)


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(path: Path) -> Page:
    """The python and sh blocks of a page, with their markers."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    counts: dict[str, int] = {}
    pending: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.match(text)
        if marker:
            kind, colon, reason = marker.groups()
            if not colon or not reason:
                page.problems.append(f"{path.name}:{i + 1}: '{kind}' without a reason")
            pending.append((kind, reason))
            i += 1
            continue
        fence = FENCE.match(text)
        if fence is None:
            if pending:
                page.problems.append(f"{path.name}:{i}: a marker not right before a fence")
                pending = []
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        lang = LANGUAGES.get(fence.group(1))
        if lang is not None:
            counts[lang] = counts.get(lang, 0) + 1
            code = "\n".join(lines[start + 1 : end]) + "\n"
            page.blocks.append(Block(path, lang, counts[lang], start + 1, code, tuple(pending)))
        elif pending:
            page.problems.append(f"{path.name}:{start + 1}: a marker on a ```{fence.group(1)}")
        pending = []
        i = end + 1
    return page


PARSED = [parse(path) for path in PAGES]
BLOCKS = [block for page in PARSED for block in page.blocks]


#: Pages whose python blocks are all excerpts of a module another test runs
#: whole (the page's test checks that each block is a verbatim excerpt).
RUN_ELSEWHERE = {"celery.md": "tests/test_celery.py runs docs/examples/celery_tasks.py"}


def test_markers():
    """Lists the blocks that are not run; each has a reason, every marker
    sits on a fence, and a page with python blocks runs at least one."""
    not_run = [
        f"{b.id} (line {b.line}): {b.marker('not run')}"
        for b in BLOCKS
        if b.marker("not run") is not None
    ]
    print("blocks not run:", *not_run, sep="\n  ")
    problems = [problem for page in PARSED for problem in page.problems]
    for page in PARSED:
        python = [b for b in page.blocks if b.lang == "python"]
        if python and all(b.marker("not run") is not None for b in python):
            if page.path.name in RUN_ELSEWHERE:
                continue
            problems.append(f"{page.path.name}: no python block is run")
    assert problems == []


def test_the_runner_finds_the_pages():
    names = {page.path.name for page in PARSED if page.blocks}
    assert {"README.md", "index.md", "logging.md", "cli.md", "django.md"} <= names


# --- the prelude -----------------------------------------------------------------------


def _message(subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg.set_content(body)
    return msg


class _Credentials:
    """A stand-in for google-auth credentials."""

    token = "ya29.a-test-token"

    def refresh(self, request: object) -> None:
        self.token = "ya29.a-refreshed-test-token"


def prelude(tmp_path: Path, tls: TLSWorld) -> tuple[dict[str, Any], list[Any]]:
    """The names of the module docstring, and what to close afterwards."""
    big = tmp_path / "big.eml"
    big.write_bytes(bytes(_message("A file", "Read from a file.\n")))
    big_file = big.open("rb")
    namespace: dict[str, Any] = {
        "__name__": "doc_example",
        "smtplug": smtplug,
        "EmailMessage": EmailMessage,
        "msg": _message("Hello", "Hi Bob.\n"),
        "message": _message("This is the subject.", "This is the message.\n"),
        "messages": [_message(f"Message {n}", f"Number {n}.\n") for n in (1, 2, 3)],
        "body_text": "The report is ready.\n",
        "secret": "s3cret-password",
        "password": "s3cret-password",
        "big_file": big_file,
        "credentials": _Credentials(),
        "server_side_context": tls.default_context,
    }
    return namespace, [big_file]


# --- TLS: the test CA, a certificate for any name ------------------------------------------


class TLSWorld:
    """A server context presenting a test-CA certificate for the name the
    client sent (SNI), made on first use; and the CA file clients trust."""

    def __init__(self, directory: Path) -> None:
        self._certs = tls_ca()
        self._directory = directory
        self.cafile = write_files(self._certs, directory).cafile
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self.default_context = server_context(self._certs.server, directory)
        self.sni_context = server_context(self._certs.server, directory, sni=self._pick)

    def _pick(self, sslobj: Any, name: str | None, context: ssl.SSLContext) -> None:
        if name is None or name in GOOD_IDENTITIES:
            return
        with self._lock:
            chosen = self._contexts.get(name)
            if chosen is None:
                leaf = self._certs.ca.issue_cert(name)
                cert = PEMCert(
                    chain_pem=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
                    key_pem=leaf.private_key_pem.bytes(),
                )
                chosen = self._contexts[name] = server_context(cert, self._directory)
        sslobj.context = chosen


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSWorld:
    return TLSWorld(tmp_path_factory.mktemp("docs-tls"))


# --- the redirected world ------------------------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_implicit: contextvars.ContextVar[bool] = contextvars.ContextVar("implicit", default=False)


@dataclass
class World:
    starttls: ScriptedServer
    implicit: ScriptedServer
    started: list[ScriptedServer]  # by the block itself
    asked: list[tuple[str, int]]  # every (host, port) a block connected to

    def delivered(self) -> int:
        servers = [self.starttls, self.implicit, *self.started]
        return sum(
            t.complete for s in servers for session in s.sessions for t in session.transactions
        )


@contextlib.contextmanager
def redirected(
    monkeypatch: pytest.MonkeyPatch, tls: TLSWorld, offers: list[str]
) -> Iterator[World]:
    """The runner's servers, and every connection going to them."""
    after_tls = TLS_CAPABILITIES
    if any(k.upper().startswith("AUTH ") for k in offers):
        after_tls = [k for k in after_tls if not k.startswith("AUTH ")]
    after_tls = [*after_tls, *offers]
    with contextlib.ExitStack() as stack:
        starttls = stack.enter_context(
            ScriptedServer(
                capabilities=[*CAPABILITIES, "STARTTLS"],
                tls_capabilities=after_tls,
                tls_context=tls.sni_context,
            )
        )
        implicit = stack.enter_context(
            ScriptedServer(
                capabilities=after_tls,
                tls_context=tls.sni_context,
                implicit_tls=True,
            )
        )
        world = World(starttls, implicit, [], [])
        stack.callback(lambda: [s.stop() for s in world.started])

        def target(host: str, port: int, implicit_tls: bool) -> tuple[str, int]:
            world.asked.append((host, port))
            if host in LOOPBACK and port in {s.port for s in world.started if s._port}:
                return host, port
            return "127.0.0.1", (implicit if implicit_tls else starttls).port

        real_open_socket = sockets_module.open_socket
        real_open_connection = aio_module.open_connection

        def open_socket_to(implicit_tls: bool) -> Callable[..., Any]:
            def open_socket(host: str, port: int, timeout: float | None) -> Any:
                return real_open_socket(*target(host, port, implicit_tls), timeout)

            return open_socket

        async def open_connection(host: str, port: int, timeout: float | None) -> Any:
            return await real_open_connection(*target(host, port, _implicit.get()), timeout)

        real_async_implicit = implicit_tls_module.AsyncImplicitTLSTransport.connect

        async def implicit_connect(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _implicit.set(True)
            try:
                return await real_async_implicit(self, *args, **kwargs)
            finally:
                _implicit.reset(token)

        # Every transport module that bound open_socket by name (imported here
        # first: one imported while it is patched would keep a dead redirect).
        for module in (sockets_module, plain_module, starttls_module, lmtp_module):
            monkeypatch.setattr(module, "open_socket", open_socket_to(False))
        monkeypatch.setattr(implicit_tls_module, "open_socket", open_socket_to(True))
        monkeypatch.setattr(aio_module, "open_connection", open_connection)
        monkeypatch.setattr(
            implicit_tls_module.AsyncImplicitTLSTransport, "connect", implicit_connect
        )

        def trusting(**kwargs: Any) -> TLSOptions:
            if all(kwargs.get(k) is None for k in ("cafile", "capath", "context")):
                kwargs["cafile"] = tls.cafile
            return TLSOptions(**kwargs)

        monkeypatch.setattr(smtplug.api, "TLSOptions", trusting)

        real_start = ScriptedServer.start

        def start(self: ScriptedServer) -> ScriptedServer:
            started = real_start(self)
            world.started.append(self)
            return started

        monkeypatch.setattr(ScriptedServer, "start", start)
        yield world


# --- python blocks --------------------------------------------------------------------------


def run_python(block: Block, namespace: dict[str, Any], tls: TLSWorld) -> None:
    code = block.code
    for placeholder in CA_PLACEHOLDERS:
        code = code.replace(f'"{placeholder}"', repr(tls.cafile))
    # Padded so that a traceback names the page's own line numbers.
    source = "\n" * block.line + code
    compiled = compile(
        source, str(block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(compiled, namespace)  # the page's own example
    if inspect.iscoroutine(result):
        asyncio.run(result)


def django_settings_of(namespace: dict[str, Any], before: set[str]) -> dict[str, Any]:
    return {
        name: value
        for name, value in namespace.items()
        if name not in before and DJANGO_SETTINGS.fullmatch(name)
    }


def send_through_django(settings: dict[str, Any]) -> None:
    """Configure Django with a settings.py fragment and send one message
    through the email backend it configures."""
    import django_settings

    django_settings.configure()
    from django.core import mail
    from django.test import override_settings

    from smtplug.django import EmailBackend

    def send(backend: object, using: str | None = None) -> None:
        assert isinstance(backend, EmailBackend)
        if using is not None:  # (Django 6.1: the mailer by its alias, not connection=)
            message = mail.EmailMessage(
                "Hello", "Sent through Django.\n", "alice@example.com", ["bob@example.org"]
            )
            assert message.send(using=using) == 1
            return
        message = mail.EmailMessage(
            "Hello",
            "Sent through Django.\n",
            "alice@example.com",
            ["bob@example.org"],
            connection=backend,
        )
        assert message.send() == 1

    if "MAILERS" in settings:
        entry = settings["MAILERS"]["default"]
        assert entry["BACKEND"] == django_settings.BACKEND
        if django_settings.MAILERS_DJANGO:
            with override_settings(MAILERS=settings["MAILERS"]):
                send(mail.mailers["default"], using="default")
        else:
            # Before Django 6.1 there is no MAILERS: the OPTIONS are the
            # backend's keywords of the same names.
            send(EmailBackend(**entry["OPTIONS"]))
        return
    email_settings = {"EMAIL_BACKEND": django_settings.BACKEND, **settings}
    assert email_settings["EMAIL_BACKEND"] == django_settings.BACKEND
    # A project's EMAIL_* settings: on Django 6.1 they are deprecated, and
    # legacy() records Django's warnings and checks that none is smtplug's.
    with django_settings.legacy(**email_settings):
        send(mail.get_connection())


PYTHON = [b for b in BLOCKS if b.lang == "python" and b.marker("not run") is None]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(
    block: Block, tmp_path: Path, tls: TLSWorld, monkeypatch: pytest.MonkeyPatch
):
    offers = [k.strip() for k in (block.marker("server offers") or "").split(",") if k.strip()]
    monkeypatch.chdir(tmp_path)
    namespace, to_close = prelude(tmp_path, tls)
    before = set(namespace)
    try:
        with redirected(monkeypatch, tls, offers) as world:
            run_python(block, namespace, tls)
            settings = django_settings_of(namespace, before)
            if settings:
                send_through_django(settings)
            for server in [world.starttls, world.implicit]:
                server.wait_idle()
            delivered = world.delivered()
            print("connections:", world.asked, "delivered:", delivered)
    finally:
        for thing in to_close:
            thing.close()
    if block.marker("sends nothing") is None:
        assert delivered, f"{block.id} sent no message (connections: {world.asked})"


# --- sh blocks --------------------------------------------------------------------------------


@dataclass
class Step:
    command: str
    status: int | None = None  # stated by "echo $?  # N"
    stderr: list[str] = field(default_factory=list)  # stated by "# smtplug: ..."
    stdout: list[str] = field(default_factory=list)  # stated by "# > ..." (send-many)


def steps_of(code: str) -> list[Step]:
    logical: list[str] = []
    for line in code.splitlines():
        if logical and logical[-1].endswith("\\"):
            logical[-1] = logical[-1][:-1].rstrip() + " " + line.strip()
        else:
            logical.append(line.strip())
    steps: list[Step] = []
    for line in logical:
        status = re.fullmatch(r"echo \$\?\s*#\s*(\d+)", line)
        if not line:
            continue
        if status:
            steps[-1].status = int(status.group(1))
        elif line.startswith("# smtplug:"):
            steps[-1].stderr.append(line[2:])
        elif line.startswith("# > "):
            steps[-1].stdout.append(line[4:])
        elif line.startswith("#"):
            continue  # says what the next command does
        else:
            steps.append(Step(line))
    return steps


def matches(expected: str, line: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, line) is not None


SH = [b for b in BLOCKS if b.lang == "sh" and b.marker("not run") is None]


@pytest.mark.parametrize("block", SH, ids=[b.id for b in SH])
def test_sh_example(block: Block, tmp_path: Path):
    if LOCAL_SERVER not in block.code:
        pytest.fail(
            f"{block.id} (line {block.line}) does not use the local test server "
            f"({LOCAL_SERVER}): mark it <!-- not run: REASON -->"
        )
    bash = shutil.which("bash")
    assert bash is not None
    with ScriptedServer({".": b"250 OK\r\n"}, capabilities=AIOSMTPD_CAPABILITIES) as server:
        address = f"127.0.0.1:{server.port}"
        steps = steps_of(block.code.replace(LOCAL_SERVER, address))
        script = ['smtplug() { "$SMTPLUG_PYTHON" -m smtplug "$@"; }']
        for n, step in enumerate(steps):
            out = f" > .step-{n}.out" if " smtplug send-many " in f" {step.command} " else ""
            script.append(f"{step.command}{out} 2> .step-{n}.err")
            script.append(f"echo $? > .step-{n}.status")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPLUG_")}
        env["SMTPLUG_PYTHON"] = sys.executable
        done = subprocess.run(
            [bash, "-c", "\n".join(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        server.wait_idle()
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # smtplug send prints nothing on stdout (send-many's: redirected)
    for n, step in enumerate(steps):
        status = int((tmp_path / f".step-{n}.status").read_text())
        stderr = (tmp_path / f".step-{n}.err").read_text().splitlines()
        said = f"{step.command}\nexit {status}, stderr:\n" + "\n".join(stderr)
        assert status == (step.status if step.status is not None else 0), said
        if step.stderr:
            assert len(stderr) == len(step.stderr), said
            for expected, line in zip(step.stderr, stderr, strict=True):
                assert matches(expected, line), f"{expected!r} does not match\n{said}"
        if step.stdout:
            stdout = (tmp_path / f".step-{n}.out").read_text().splitlines()
            shown = f"{said}\nstdout:\n" + "\n".join(stdout)
            assert len(stdout) == len(step.stdout), shown
            for expected, line in zip(step.stdout, stdout, strict=True):
                assert matches(expected, line), f"{expected!r} does not match\n{shown}"
    sends = [s for s in steps if s.command.startswith("smtplug send")]
    if sends and block.marker("sends nothing") is None:
        assert any(t.complete for s in server.sessions for t in s.transactions)


# --- the runner itself ------------------------------------------------------------------------


def test_parse_reads_markers_and_finds_misplaced_ones(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: a fragment -->\n"
        "```python\nA = 1\n```\n"
        "<!-- sends nothing: defines a class -->\n"
        "<!-- server offers: AUTH XOAUTH2, DSN -->\n"
        "```python\nclass B: ...\n```\n"
        "<!-- not run -->\n"
        "```sh\necho hi\n```\n"
        "<!-- sends nothing: lost -->\n\n"
        "```toml\n[x]\n```\n",
        encoding="utf-8",
    )
    parsed = parse(page)
    first, second, sh = parsed.blocks
    assert (first.id, first.line, first.code) == ("page.md:python-1", 2, "A = 1\n")
    assert first.marker("not run") == "a fragment"
    assert second.marker("sends nothing") == "defines a class"
    assert second.marker("server offers") == "AUTH XOAUTH2, DSN"
    assert second.marker("not run") is None
    assert sh.id == "page.md:sh-1" and sh.marker("not run") == ""
    assert parsed.problems == [
        "page.md:10: 'not run' without a reason",
        "page.md:14: a marker not right before a fence",
    ]


def test_steps_of_a_shell_block():
    steps = steps_of(
        "# what it does\n"
        "smtplug send --server 127.0.0.1:1 \\\n"
        "    --to you@example.org\n"
        "# smtplug: sent to ...\n"
        "# > a.eml: sent ...\n"
        "echo $?     # 0\n"
        "\n"
        "printf 'x' > note.eml\n"
    )
    assert [s.command for s in steps] == [
        "smtplug send --server 127.0.0.1:1 --to you@example.org",
        "printf 'x' > note.eml",
    ]
    assert (steps[0].status, steps[0].stderr) == (0, ["smtplug: sent to ..."])
    assert steps[0].stdout == ["a.eml: sent ..."]
    assert (steps[1].status, steps[1].stderr) == (None, [])
    assert matches("smtplug: sent to ... (250 OK)", "smtplug: sent to 1 recipient (250 OK)")
    assert not matches("smtplug: sent to ... (250 OK)", "smtplug: sent to 1 recipient (251 OK)")
