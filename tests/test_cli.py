"""``smtplug send``: the command line on top of ``smtplug.sendmessage``.

Run in-process through ``smtplug.cli.main`` (and once as a real
``python -m smtplug`` subprocess) against ``smtplug.testing.ScriptedServer``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import smtplug.cli_send as cli_send
from servers import refused_port
from smtplug.cli import main
from smtplug.cli_send import parse_server
from smtplug.testing import CLOSE, ScriptedServer

PASSWORD = "s3cret-Wonder"
SECRET_FORMS = [
    PASSWORD,
    base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode(),
    base64.b64encode(PASSWORD.encode()).decode(),
]


def send(server, *args: str) -> int:
    return main(["send", "--server", f"127.0.0.1:{server.port}", "--no-tls", *args])


def base(*extra: str) -> list[str]:
    return ["--from", "alice@example.com", "--to", "bob@example.org", *extra]


def received(server, index: int = 0):
    server.wait_idle()
    content = server.sessions[index].transactions[-1].content
    return email.message_from_bytes(content.replace(b"\r\n", b"\n"), policy=email.policy.default)


def rcpts(server, index: int = 0) -> list[str]:
    server.wait_idle()
    commands = server.sessions[index].transactions[-1].rcpts
    return [c.args.removeprefix("TO:<").split(">")[0] for c in commands]


@pytest.fixture(autouse=True)
def no_inherited_password(monkeypatch):
    monkeypatch.delenv("SMTPLUG_PASSWORD", raising=False)


@pytest.fixture
def tty_stdin(monkeypatch):
    """Make stdin look like a terminal (for the password prompt)."""

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"")))


@pytest.fixture
def pipe_stdin(monkeypatch):
    """stdin as a pipe holding ``data``."""

    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    feed(b"")
    return feed


# -- the message ---------------------------------------------------------------


def test_body_subject_from_to_sent_exit_0(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = send(
            server, *base("--to", "carol@example.org", "--subject", "Hi", "--body", "Hello.")
        )
        got = received(server)
    assert code == 0
    assert got["Subject"] == "Hi"
    assert got["From"] == "alice@example.com"
    assert got["To"] == "bob@example.org, carol@example.org"
    assert got.get_content() == "Hello.\n"
    assert rcpts(server) == ["bob@example.org", "carol@example.org"]
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"smtplug: sent to 2 recipients via 127.0.0.1:{server.port} (250 2.0.0 OK: queued)"
    ]


def test_header_option_replaces_and_adds_fields(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = send(
            server,
            *base("--body", "x", "--header", "To: Team <team@example.org>"),
            "--header",
            "X-Mailer:  smtplug-cli",
        )
        got = received(server)
    assert code == 0
    assert got["To"] == "Team <team@example.org>"  # replaces the To built from --to
    assert got["X-Mailer"] == "smtplug-cli"
    # --to still gives the envelope recipient
    assert rcpts(server) == ["bob@example.org"]


@pytest.mark.parametrize("bad", ["no colon here", ": value", "Content-Type: text/html"])
def test_bad_header_is_usage_error_64(capsys, pipe_stdin, bad):
    with ScriptedServer() as server:
        code = send(server, *base("--body", "x", "--header", bad))
    assert code == 64
    assert server.connections == 0
    assert "Traceback" not in capsys.readouterr().err


def test_attachments_with_guessed_types(tmp_path, capsys, pipe_stdin):
    (tmp_path / "notes.txt").write_bytes(b"plain notes\n")
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "blob.unknownext").write_bytes(b"\x00\x01\x02")
    with ScriptedServer() as server:
        code = send(
            server,
            *base("--subject", "Files", "--body", "See attached."),
            *("--attach", str(tmp_path / "notes.txt")),
            *("--attach", str(tmp_path / "pic.png")),
            *("--attach", str(tmp_path / "blob.unknownext")),
        )
        got = received(server)
    assert code == 0
    assert got.get_content_type() == "multipart/mixed"
    body = got.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content() == "See attached.\n"
    parts = {p.get_filename(): p for p in got.iter_attachments()}
    assert parts["notes.txt"].get_content_type() == "text/plain"
    assert parts["pic.png"].get_content_type() == "image/png"
    assert parts["pic.png"].get_content() == b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert parts["blob.unknownext"].get_content_type() == "application/octet-stream"
    assert parts["blob.unknownext"].get_content() == b"\x00\x01\x02"


def test_missing_attachment_is_64_with_one_line(tmp_path, capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = send(server, *base("--attach", str(tmp_path / "nope.pdf")))
    assert code == 64
    assert server.connections == 0
    err = capsys.readouterr().err
    assert err.startswith("smtplug: InvalidInputError: 501 cannot read --attach file")
    assert len(err.splitlines()) == 1


RAW = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Cc: carol@example.org\r\n"
    b"Bcc: dave@example.org\r\n"
    b"Subject: raw\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <raw@example.com>\r\n"
    b"\r\n"
    b"Line one.\r\n"
    b".leading dot\r\n"
)


def test_message_file_as_is_recipients_from_headers(tmp_path, capsys, pipe_stdin):
    path = tmp_path / "note.eml"
    path.write_bytes(RAW)
    with ScriptedServer() as server:
        code = send(server, "--message", str(path))
        server.wait_idle()
    assert code == 0
    transaction = server.sessions[0].transactions[0]
    assert rcpts(server) == ["bob@example.org", "carol@example.org", "dave@example.org"]
    assert transaction.content == RAW.replace(b"Bcc: dave@example.org\r\n", b"")
    assert "sent to 3 recipients" in capsys.readouterr().err


def test_message_from_stdin_with_subject_override(capsys, pipe_stdin):
    pipe_stdin(RAW)
    with ScriptedServer() as server:
        code = send(server, "--message", "-", "--subject", "replaced", "--to", "eve@example.org")
        got = received(server)
    assert code == 0
    assert got["Subject"] == "replaced"
    assert got.get_content() == "Line one.\n.leading dot\n"
    assert rcpts(server) == ["eve@example.org"]


def test_message_with_body_is_usage_error(tmp_path, capsys, pipe_stdin):
    path = tmp_path / "note.eml"
    path.write_bytes(RAW)
    with ScriptedServer() as server:
        code = send(server, "--message", str(path), "--body", "x")
    assert code == 64
    assert server.connections == 0
    assert "--message is the whole message" in capsys.readouterr().err


def test_no_recipients_is_64(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = send(server, "--from", "alice@example.com", "--body", "x")
    assert code == 64
    assert server.connections == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("smtplug: InvalidInputError: 501 ")


# -- exit codes -----------------------------------------------------------------


def test_exit_1_sent_but_some_refused_with_atleastone(capsys, pipe_stdin):
    with ScriptedServer({("RCPT", 2): b"550 5.1.1 No such user\r\n"}) as server:
        code = send(server, *base("--to", "nobody@example.org", "--atleastone", "--body", "x"))
        server.wait_idle()
    assert code == 1
    assert server.sessions[0].transactions[0].complete
    (line,) = capsys.readouterr().err.splitlines()
    assert "sent to 1 recipient" in line
    assert "refused: nobody@example.org: 550 5.1.1 No such user" in line


def test_exit_2_recipient_refused_nothing_sent(capsys, pipe_stdin):
    with ScriptedServer({("RCPT", 2): b"550 5.1.1 No such user\r\n"}) as server:
        code = send(server, *base("--to", "nobody@example.org", "--body", "x"))
        server.wait_idle()
    assert code == 2
    assert "DATA" not in server.sessions[0].verbs
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("smtplug: not sent (recipients refused")
    assert "--atleastone" in line


def test_exit_2_message_refused_at_end(capsys, pipe_stdin):
    with ScriptedServer({".": b"554 5.7.1 Spam\r\n"}) as server:
        code = send(server, *base("--body", "x"))
    assert code == 2
    assert capsys.readouterr().err.splitlines() == ["smtplug: ResponseError: 554 5.7.1 Spam"]


def test_exit_3_every_refusal_temporary(capsys, pipe_stdin):
    with ScriptedServer({"RCPT": b"450 4.2.1 Mailbox busy\r\n"}) as server:
        code = send(server, *base("--body", "x"))
    assert code == 3


def test_exit_3_temporary_failure_at_end(capsys, pipe_stdin):
    with ScriptedServer({".": b"451 4.3.0 Try later\r\n"}) as server:
        code = send(server, *base("--body", "x"))
    assert code == 3
    assert capsys.readouterr().err.startswith("smtplug: ResponseError: 451 4.3.0 Try later")


def test_exit_3_server_unreachable(capsys, pipe_stdin):
    with refused_port() as port:
        code = main(["send", "--server", f"127.0.0.1:{port}", "--no-tls", *base("--body", "x")])
    assert code == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("smtplug: ConnectError: 400 no server could be used")


def test_exit_4_delivery_unknown(capsys, pipe_stdin):
    with ScriptedServer({".": CLOSE}) as server:
        code = send(server, *base("--body", "x"))
    assert code == 4
    assert capsys.readouterr().err.startswith("smtplug: DeliveryUnknownError: 400 ")


def test_exit_69_greeting_refused_permanently(capsys, pipe_stdin):
    with ScriptedServer(greeting=b"554 5.3.2 Go away\r\n") as server:
        code = send(server, *base("--body", "x"))
    assert code == 69
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("smtplug: ConnectError: 554 ")


def test_exit_69_tls_required_but_not_offered(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = main(
            [
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--tls-policy",
                "require",
                *base("--body", "x"),
            ]
        )
    assert code == 69
    assert server.sessions[0].transactions == []


def test_exit_64_argparse_error(capsys):
    assert main(["send", "--no-such-option"]) == 64
    assert main(["send", "--timeout", "soon"]) == 64
    assert main(["send", "--tls", "--no-tls"]) == 64


def test_unsafe_option_cannot_be_abbreviated(capsys):
    # allow_abbrev=False: "--insecure" is not --insecure-no-verify
    assert main(["send", "--insecure", "--to", "b@example.org"]) == 64


def test_exit_64_bad_option_value_from_the_library(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = main(
            [
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--tls-backend",
                "nope",
                *base("--body", "x"),
            ]
        )
    assert code == 64
    assert server.connections == 0


def test_quiet_prints_nothing(capsys, pipe_stdin):
    with ScriptedServer({".": b"554 5.7.1 Spam\r\n"}) as server:
        assert send(server, *base("--body", "x", "--quiet")) == 2
        assert send(server, *base("--body", "x", "--quiet", "--insecure-no-verify")) == 2
    assert capsys.readouterr() == ("", "")


def test_warnings_are_printed_unless_quiet(capsys, pipe_stdin):
    # STARTTLS refused: the default opportunistic policy goes on in plain text, loudly.
    script = {"STARTTLS": b"454 4.7.0 TLS not available\r\n"}
    with ScriptedServer(script, capabilities=["STARTTLS", "8BITMIME"]) as server:
        code = main(["send", "--server", f"127.0.0.1:{server.port}", *base("--body", "x")])
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("smtplug: warning: ") and "WITHOUT TLS" in lines[0]
    assert lines[1].startswith("smtplug: sent to 1 recipient")


# -- servers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail.example.org", ("mail.example.org", 25)),
        ("mail.example.org:587", ("mail.example.org", 587)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::1]", ("::1", 25)),
        ("::1", ("::1", 25)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
    ],
)
def test_parse_server(text, expected):
    assert parse_server(text, 25) == expected


@pytest.mark.parametrize(
    "text", ["host:", "host:0", "host:65536", "host:smtp", "[::1", "[::1]x", ":25"]
)
def test_parse_server_refuses(text, capsys):
    assert main(["send", "--server", text, "--to", "b@example.org"]) == 64
    assert "--server" in capsys.readouterr().err


def test_implicit_tls_default_port_is_465():
    assert parse_server("smtp.example.org", 465) == ("smtp.example.org", 465)


def test_failover_in_order(capsys, pipe_stdin):
    with (
        ScriptedServer(greeting=b"421 4.3.2 Busy\r\n") as first,
        ScriptedServer() as second,
        refused_port() as dead,
    ):
        code = main(
            [
                "send",
                "--no-tls",
                *("--server", f"127.0.0.1:{dead}"),
                *("--server", f"127.0.0.1:{first.port}"),
                *("--server", f"127.0.0.1:{second.port}"),
                *base("--body", "x"),
            ]
        )
        second.wait_idle()
    assert code == 0
    assert first.connections == 1 and first.sessions[0].transactions == []
    assert second.sessions[0].transactions[0].complete
    assert f"via 127.0.0.1:{second.port}" in capsys.readouterr().err


# -- authentication -------------------------------------------------------------


def auth_server():
    return ScriptedServer(capabilities=["AUTH PLAIN", "8BITMIME"])


def sent_password(server) -> str:
    server.wait_idle()
    (auth,) = [c for c in server.sessions[0].commands if c.verb == "AUTH"]
    mechanism, initial = auth.args.split()
    assert mechanism == "PLAIN"
    return base64.b64decode(initial).split(b"\0")[2].decode()


def test_password_from_file_first_line(tmp_path, capsys, pipe_stdin):
    path = tmp_path / "pw"
    path.write_text(f"{PASSWORD}\r\nsecond line\n")
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--password-file", str(path)))
        assert sent_password(server) == PASSWORD
    assert code == 0


def test_password_from_named_env(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("MY_PW", PASSWORD)
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--password-env", "MY_PW"))
        assert sent_password(server) == PASSWORD
    assert code == 0


def test_password_from_default_env(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("SMTPLUG_PASSWORD", PASSWORD)
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice"))
        assert sent_password(server) == PASSWORD
    assert code == 0


def test_password_prompt_only_on_a_terminal(monkeypatch, capsys, tty_stdin):
    prompts = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr(cli_send.getpass, "getpass", fake_getpass)
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice"))
        assert sent_password(server) == PASSWORD
    assert code == 0
    assert prompts == ["smtplug: password for alice: "]


def test_no_password_without_terminal_is_64(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setattr(
        cli_send.getpass, "getpass", lambda prompt="": pytest.fail("prompted without a tty")
    )
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice"))
    assert code == 64
    assert server.connections == 0
    assert "no password" in capsys.readouterr().err


def test_unset_password_env_is_64(capsys, pipe_stdin):
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--password-env", "UNSET_PW"))
    assert code == 64
    assert server.connections == 0


def test_password_on_argv_refused_without_echo(capsys):
    for argv in (
        ["send", "--auth", "alice", "--password", PASSWORD, "--to", "b@example.org"],
        ["send", "--auth", "alice", f"--password={PASSWORD}", "--to", "b@example.org"],
    ):
        assert main(argv) == 64
        out, err = capsys.readouterr()
        assert PASSWORD not in out + err
        assert "--password-file" in err


def test_transcript_never_shows_the_password(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("SMTPLUG_PASSWORD", PASSWORD)
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--transcript"))
        assert sent_password(server) == PASSWORD
    assert code == 0
    out, err = capsys.readouterr()
    assert "--> AUTH PLAIN" in err and "<-- 235" in err
    for secret in SECRET_FORMS:
        assert secret not in out + err


def test_auth_failure_is_2_and_shows_no_secret(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("SMTPLUG_PASSWORD", PASSWORD)
    script = {"AUTH": b"535 5.7.8 Authentication credentials invalid\r\n"}
    with ScriptedServer(script, capabilities=["AUTH PLAIN"]) as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--transcript"))
    assert code == 2
    out, err = capsys.readouterr()
    assert "smtplug: AuthenticationError: 535 " in err
    for secret in SECRET_FORMS:
        assert secret not in out + err


# -- TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from tlsfixtures import server_context, tls_ca, write_files

    directory = tmp_path_factory.mktemp("cli-tls")
    certs = tls_ca()
    return write_files(certs, directory), server_context(certs.server, directory)


def test_starttls_with_cafile(tls_files, capsys, pipe_stdin):
    files, context = tls_files
    with ScriptedServer(tls_context=context) as server:
        code = main(
            [
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--cafile",
                files.cafile,
                *base("--body", "x"),
            ]
        )
        server.wait_idle()
    assert code == 0
    assert server.sessions[0].tls
    assert server.sessions[0].transactions[0].complete


def test_implicit_tls_with_cafile(tls_files, capsys, pipe_stdin):
    files, context = tls_files
    with ScriptedServer(tls_context=context, implicit_tls=True) as server:
        code = main(
            [
                "send",
                "--tls",
                "--server",
                f"127.0.0.1:{server.port}",
                "--cafile",
                files.cafile,
                *base("--body", "x", "--tls-backend", "pyopenssl"),
            ]
        )
        server.wait_idle()
    assert code == 0
    assert server.sessions[0].transactions[0].complete


def test_unverified_certificate_is_69(tls_files, capsys, pipe_stdin):
    _, context = tls_files
    with ScriptedServer(tls_context=context) as server:
        code = main(["send", "--server", f"127.0.0.1:{server.port}", *base("--body", "x")])
    assert code == 69
    assert server.sessions[0].transactions == []
    assert capsys.readouterr().err.startswith("smtplug: ConnectError: ")


def test_insecure_no_verify_sends_and_warns(tls_files, capsys, pipe_stdin):
    _, context = tls_files
    with ScriptedServer(tls_context=context) as server:
        code = main(
            [
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--insecure-no-verify",
                *base("--body", "x"),
            ]
        )
    assert code == 0
    err = capsys.readouterr().err
    assert "smtplug: warning: " in err and "not checked" in err


# -- output -------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_for_a_large_message_on_a_terminal(tmp_path, monkeypatch, pipe_stdin):
    path = tmp_path / "big.eml"
    line = b"x" * 76 + b"\r\n"
    path.write_bytes(RAW.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + line * 40_000)  # ~3 MiB
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with ScriptedServer() as server:
        code = send(server, "--message", str(path))
    assert code == 0
    text = terminal.getvalue()
    assert "\rsending: 1.0 of 3.0 MiB (33%)" in text and "MiB, done" in text
    assert text.splitlines()[-1].startswith("smtplug: sent to 3 recipients")


def test_no_progress_line_for_a_small_message(monkeypatch, pipe_stdin):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with ScriptedServer() as server:
        assert send(server, *base("--body", "x")) == 0
    assert "sending:" not in terminal.getvalue()


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path, capsys, pipe_stdin):
    path = tmp_path / "big.eml"
    path.write_bytes(RAW + b"y" * 70 + b"\r\n" * 40_000)
    with ScriptedServer() as server:
        assert send(server, "--message", str(path)) == 0
    assert "sending:" not in capsys.readouterr().err


def test_help_reads_like_a_man_page(capsys):
    assert main(["send", "--help"]) == 0
    text = capsys.readouterr().out
    for group in ("message:", "envelope:", "server:", "TLS:", "authentication:", "output:"):
        assert f"\n{group}\n" in text
    assert "exit status:" in text and "examples:" in text
    for code in ("0", "1", "2", "3", "4", "64", "69"):
        assert f"\n  {code:<3} " in text
    assert "--insecure-no-verify" in text and "--password-file" in text
    assert "\n  --password " not in text


def test_top_level_help_lists_send(capsys):
    assert main(["--help"]) == 0
    assert "send" in capsys.readouterr().out


# -- a real subprocess ----------------------------------------------------------


def test_python_m_smtplug_send_subprocess(tmp_path):
    env = dict(os.environ, SMTPLUG_PASSWORD=PASSWORD)
    with auth_server() as server:
        argv = [
            sys.executable,
            "-m",
            "smtplug",
            "send",
            *("--server", f"127.0.0.1:{server.port}", "--no-tls"),
            *base("--subject", "from a process", "--body", "Hello."),
            *("--auth", "alice", "--transcript"),
        ]
        assert not any(PASSWORD in arg for arg in argv)
        done = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
        assert sent_password(server) == PASSWORD
        got = received(server)
    assert done.returncode == 0, done.stderr
    assert got["Subject"] == "from a process"
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("smtplug: sent to 1 recipient")
    for secret in SECRET_FORMS:
        assert secret not in stderr and secret not in done.stdout.decode()


def test_subprocess_error_exit_code_no_traceback():
    with ScriptedServer({".": b"554 5.7.1 Spam\r\n"}) as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "smtplug",
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--no-tls",
                *base("--body", "x"),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == ["smtplug: ResponseError: 554 5.7.1 Spam"]


def test_main_module_exists():
    assert (Path(cli_send.__file__).parent / "__main__.py").is_file()


def test_client_queue_null_sender_passed_through(capsys, pipe_stdin):
    with ScriptedServer(capabilities=["XQUE", "8BITMIME"]) as server:
        code = send(
            server,
            *("--from", "", "--to", "bob@example.org", "--body", "bounce"),
            *("--client", "cli.example", "--queue", "--timeout", "20"),
        )
        server.wait_idle()
    assert code == 0
    commands = server.sessions[0].commands
    assert commands[0].raw == b"EHLO cli.example\r\n"
    assert "QUED" in server.sessions[0].verbs
    assert next(c.raw for c in commands if c.verb == "MAIL").startswith(b"MAIL FROM:<>")


def test_mechanism_option_picks_the_mechanism(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("SMTPLUG_PASSWORD", PASSWORD)
    with ScriptedServer(capabilities=["AUTH PLAIN LOGIN"]) as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--mechanism", "LOGIN"))
        server.wait_idle()
    assert code == 0
    (auth,) = [c for c in server.sessions[0].commands if c.verb == "AUTH"]
    assert auth.args.split()[0] == "LOGIN"


def test_dsn_options_reach_the_wire():
    with ScriptedServer(capabilities=["DSN", "8BITMIME"]) as server:
        code = send(
            server,
            *base("--body", "hi", "--dsn-notify", "failure,delay", "--dsn-ret", "HDRS"),
            "--dsn-envid",
            "id+1",
            "--dsn-orcpt",
        )
        server.wait_idle()
    assert code == 0
    commands = [c.line for c in server.sessions[0].commands]
    assert "MAIL FROM:<alice@example.com> RET=HDRS ENVID=id+2B1" in commands
    assert "RCPT TO:<bob@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.org" in (
        commands
    )


def test_dsn_refused_when_the_server_lacks_it_or_the_value_is_bad(capsys):
    with ScriptedServer() as server:
        assert send(server, *base("--body", "hi", "--dsn-notify", "SUCCESS")) == 64
        assert send(server, *base("--body", "hi", "--dsn-notify", "SOMETIMES")) == 64
        server.wait_idle()
    assert all(not s.transactions for s in server.sessions)
    assert "does not offer DSN" in capsys.readouterr().err


# -- --authzid, --capath -------------------------------------------------------------


def test_authzid_goes_in_the_plain_response(monkeypatch, capsys, pipe_stdin):
    monkeypatch.setenv("SMTPLUG_PASSWORD", PASSWORD)
    with auth_server() as server:
        code = send(server, *base("--body", "x", "--auth", "alice", "--authzid", "shared-box"))
        server.wait_idle()
    assert code == 0, capsys.readouterr().err
    (auth,) = [c for c in server.sessions[0].commands if c.verb == "AUTH"]
    mechanism, initial = auth.args.split()
    assert mechanism == "PLAIN"
    assert base64.b64decode(initial).split(b"\0") == [b"shared-box", b"alice", PASSWORD.encode()]


def test_authzid_without_auth_is_64(capsys, pipe_stdin):
    with ScriptedServer() as server:
        code = send(server, *base("--body", "x", "--authzid", "shared-box"))
    assert code == 64
    assert "authzid given without username" in capsys.readouterr().err
    assert server.sessions == []


def test_starttls_with_capath(tls_files, tmp_path, capsys, pipe_stdin):
    from OpenSSL import crypto

    files, context = tls_files
    capath = tmp_path / "capath"
    capath.mkdir()
    # OpenSSL's hashed directory: the CA under <subject hash>.0, as c_rehash names it.
    pem = Path(files.cafile).read_bytes()
    digest = crypto.load_certificate(crypto.FILETYPE_PEM, pem).subject_name_hash()
    (capath / f"{digest:08x}.0").write_bytes(pem)
    with ScriptedServer(tls_context=context) as server:
        code = main(
            [
                "send",
                "--server",
                f"127.0.0.1:{server.port}",
                "--capath",
                str(capath),
                *base("--body", "x"),
            ]
        )
        server.wait_idle()
    assert code == 0, capsys.readouterr().err
    assert server.sessions[0].tls
    assert server.sessions[0].transactions[0].complete


def test_a_capath_without_the_ca_is_69(tls_files, tmp_path, capsys, pipe_stdin):
    _, context = tls_files
    empty = tmp_path / "empty-capath"
    empty.mkdir()
    with ScriptedServer(tls_context=context) as server:
        code = main(
            ["send", "--server", f"127.0.0.1:{server.port}", "--capath", str(empty), *base()]
        )
    assert code == 69
    assert server.sessions[0].transactions == []
