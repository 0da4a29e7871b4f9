"""``smtplug send-many``: many message files through a ``smtplug.Pool``.

Run in-process through ``smtplug.cli.main`` (and once as a real
``python -m smtplug`` subprocess) against ``smtplug.testing.ScriptedServer``.
What a message meets at the server is chosen by its recipient's local part
(``rules``), so that the outcomes do not depend on which connection takes
which message.
"""

from __future__ import annotations

import email
import email.policy
import io
import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import smtplug.cli_batch as cli_batch
from smtplug.cli import main
from smtplug.testing import CLOSE, Answer, Command, ScriptedServer


@pytest.fixture(autouse=True)
def no_inherited_password(monkeypatch):
    monkeypatch.delenv("SMTPLUG_PASSWORD", raising=False)


@pytest.fixture
def pipe_stdin(monkeypatch):
    """stdin as a pipe holding ``text``."""

    def feed(text: str) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))

    feed("")
    return feed


def write(directory: Path, name: str, to: str = "bob@example.org", subject: str = "") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        f"From: alice@example.com\r\nTo: {to}\r\nSubject: {subject or name}\r\n\r\n"
        f"Body of {name}.\r\n".encode()
    )
    return path


def batch(server: ScriptedServer, *args: str) -> int:
    return main(["send-many", "--server", f"127.0.0.1:{server.port}", "--no-tls", *args])


def local(command: Command) -> str:
    """The local part of the last recipient of the command's transaction."""
    rcpts = command.session.transactions[-1].rcpts if command.verb == "." else [command]
    return rcpts[-1].args.removeprefix("TO:<").split("@")[0]


def rules() -> dict[str, object]:
    """RCPT and end-of-message answers chosen by the recipient's local part."""

    def rcpt(command: Command):
        return {
            "refused": b"550 5.1.1 No such user\r\n",
            "soft": b"450 4.2.1 Try later\r\n",
        }.get(local(command))

    def end(command: Command):
        return {
            "perm": b"554 5.7.1 Spam\r\n",
            "temp": b"451 4.3.0 Busy\r\n",
            "lost": CLOSE,
        }.get(local(command))

    return {"RCPT": rcpt, ".": end}


def subjects(server: ScriptedServer) -> list[str]:
    server.wait_idle()
    found = []
    for session in server.sessions:
        for transaction in session.transactions:
            if transaction.complete:
                content = transaction.content.replace(b"\r\n", b"\n")
                message = email.message_from_bytes(content, policy=email.policy.default)
                found.append(str(message["Subject"]))
    return found


# -- many files, several connections --------------------------------------------


def test_many_files_over_several_connections_reused(tmp_path, capsys, pipe_stdin):
    paths = [write(tmp_path, f"m{i:02}.eml") for i in range(24)]
    with ScriptedServer() as server:
        code = batch(server, "--connections", "3", *map(str, paths))
        got = subjects(server)
    assert code == 0
    assert sorted(got) == [p.name for p in paths]  # each once
    assert 1 <= len(server.sessions) <= 3 < len(paths)  # reuse: more messages than sessions
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{p}: sent to 1 recipient" for p in paths]  # in order
    assert err.splitlines() == ["smtplug: 24 messages: 24 sent, 0 not sent, 0 delivery unknown"]


def test_a_directory_means_its_regular_files_sorted(tmp_path, capsys, pipe_stdin):
    outbox = tmp_path / "outbox"
    for name in ["b.eml", "a.eml", "c.eml"]:
        write(outbox, name)
    (outbox / "sub").mkdir()
    write(outbox / "sub", "inner.eml")  # not a regular file of outbox: not sent
    with ScriptedServer() as server:
        code = batch(server, str(outbox))
        got = subjects(server)
    assert code == 0
    assert sorted(got) == ["a.eml", "b.eml", "c.eml"]
    assert capsys.readouterr().out.splitlines() == [
        f"{outbox / name}: sent to 1 recipient" for name in ["a.eml", "b.eml", "c.eml"]
    ]


def test_file_names_from_stdin(tmp_path, capsys, pipe_stdin):
    paths = [write(tmp_path, f"s{i}.eml") for i in range(5)]
    pipe_stdin("".join(f"{p}\n" for p in paths[1:]) + "\n")  # (a blank line: skipped)
    with ScriptedServer() as server:
        code = batch(server, str(paths[0]), "-")
        got = subjects(server)
    assert code == 0
    assert sorted(got) == [p.name for p in paths]
    assert capsys.readouterr().out.splitlines() == [f"{p}: sent to 1 recipient" for p in paths]


def test_from_and_to_replace_each_messages_envelope(tmp_path, pipe_stdin):
    paths = [write(tmp_path, f"e{i}.eml", to=f"own{i}@example.org") for i in range(3)]
    with ScriptedServer() as server:
        code = batch(
            server, "--from", "bounce@example.com", "--to", "list@example.org", *map(str, paths)
        )
        server.wait_idle()
    assert code == 0
    transactions = [t for s in server.sessions for t in s.transactions if t.complete]
    assert len(transactions) == 3
    for t in transactions:
        assert t.mail is not None and t.mail.args.startswith("FROM:<bounce@example.com>")
        assert [r.args for r in t.rcpts] == ["TO:<list@example.org>"]


# -- every status, and the exit code's precedence ----------------------------------


@pytest.mark.parametrize(
    ("locals_", "code", "line"),
    [
        (["ok", "ok"], 0, None),
        (["ok", "refused+ok"], 1, "sent, refused: refused@example.org: 550 5.1.1 No such user"),
        (["ok", "soft"], 3, "not sent (temporary): recipients refused: soft@example.org: 450"),
        (["ok", "temp"], 3, "not sent (temporary): ResponseError: 451 4.3.0 Busy"),
        (["ok", "perm"], 2, "not sent: ResponseError: 554 5.7.1 Spam"),
        (["ok", "refused"], 2, "not sent: recipients refused: refused@example.org: 550"),
        (["ok", "lost"], 4, "delivery unknown: DeliveryUnknownError: "),
        # the precedence: 4 over 2 over 3 over 1
        (["refused+ok", "temp"], 3, None),
        (["refused+ok", "temp", "perm"], 2, None),
        (["refused+ok", "temp", "perm", "lost"], 4, None),
    ],
)
def test_every_status_and_the_exit_code_precedence(
    tmp_path, capsys, pipe_stdin, locals_, code, line
):
    paths = []
    for i, name in enumerate(locals_):
        to = ", ".join(f"{part}@example.org" for part in name.split("+"))
        paths.append(write(tmp_path, f"{i}.eml", to=to))
    extra = ["--atleastone"] if any("+" in name for name in locals_) else []
    with ScriptedServer(rules()) as server:
        assert batch(server, *extra, *map(str, paths)) == code
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(paths)
    assert out[0].startswith(f"{paths[0]}: sent")
    if line is not None:
        assert out[1].startswith(f"{paths[1]}: {line}"), out[1]


def test_summary_counts_each_kind(tmp_path, capsys, pipe_stdin):
    names = ["ok", "refused+ok", "temp", "perm", "lost"]
    paths = [
        write(tmp_path, f"{i}.eml", to=", ".join(f"{p}@example.org" for p in n.split("+")))
        for i, n in enumerate(names)
    ]
    with ScriptedServer(rules()) as server:
        assert batch(server, "--atleastone", "--quiet", *map(str, paths)) == 4
    out, err = capsys.readouterr()
    assert out == ""  # --quiet: nothing but the summary
    assert err.splitlines() == [
        "smtplug: 5 messages: 2 sent (1 with refused recipients), 2 not sent "
        "(1 temporarily), 1 delivery unknown"
    ]


# -- 421 mid-batch ---------------------------------------------------------------------


def goes_down_once(at: int) -> dict[str, object]:
    """A 421 (then the connection closed) to the ``at``-th DATA of the server
    (not to MAIL: a kept connection that fails at MAIL is reopened at once,
    transparently, by the pool)."""
    count = itertools.count(1)

    def data(command: Command):
        if next(count) == at:
            return Answer(b"421 4.3.2 Going down\r\n", then=CLOSE)
        return None

    return {"DATA": data}


def test_421_mid_batch_without_retry_is_not_sent_temporarily(tmp_path, capsys, pipe_stdin):
    paths = [write(tmp_path, f"r{i}.eml") for i in range(6)]
    with ScriptedServer(goes_down_once(3)) as server:
        code = batch(server, "--connections", "1", *map(str, paths))
        got = subjects(server)
    assert code == 3
    assert sorted(got) == [p.name for i, p in enumerate(paths) if i != 2]
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith(f"{paths[2]}: not sent (temporary): ") and "421" in out[2]
    assert all("sent to 1 recipient" in line for i, line in enumerate(out) if i != 2)
    assert len(server.sessions) == 2  # a fresh connection after the 421


def test_421_mid_batch_with_retry_sends_every_message_once(tmp_path, capsys, pipe_stdin):
    paths = [write(tmp_path, f"r{i}.eml") for i in range(6)]
    with ScriptedServer(goes_down_once(3)) as server:
        code = batch(server, "--connections", "1", "--retry", "2", "--json", *map(str, paths))
        got = subjects(server)
    assert code == 0
    assert sorted(got) == [p.name for p in paths]  # each exactly once
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in records] == ["sent"] * 6
    assert [r["attempts"] for r in records] == [1, 1, 2, 1, 1, 1]


# -- files that are not messages ------------------------------------------------------


def test_a_file_that_is_not_a_message_is_its_outcome_not_the_end(tmp_path, capsys, pipe_stdin):
    good = [write(tmp_path, f"g{i}.eml") for i in range(3)]
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"just some words\n")
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.eml"
    order = [good[0], junk, good[1], missing, empty, good[2]]
    with ScriptedServer() as server:
        code = batch(server, "--to", "bob@example.org", *map(str, order))
        got = subjects(server)
    assert code == 2
    assert sorted(got) == [p.name for p in good]
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in order]  # in order
    assert lines[1].startswith(f"{junk}: not sent: InvalidInputError: 501 ")
    assert "not an RFC 5322 message" in lines[1]
    assert lines[3].startswith(f"{missing}: not sent: InvalidInputError: 501 cannot read")
    assert "not an RFC 5322 message (empty)" in lines[4]
    assert err.splitlines()[-1] == ("smtplug: 6 messages: 3 sent, 3 not sent, 0 delivery unknown")


def test_json_lines(tmp_path, capsys, pipe_stdin):
    paths = [
        write(tmp_path, "0.eml"),
        write(tmp_path, "1.eml", to="refused@example.org, ok@example.org"),
        write(tmp_path, "2.eml", to="perm@example.org"),
        write(tmp_path, "3.eml", to="lost@example.org"),
        tmp_path / "absent.eml",
    ]
    with ScriptedServer(rules()) as server:
        assert batch(server, "--json", "--atleastone", *map(str, paths)) == 4
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in paths]
    assert [r["status"] for r in records] == ["sent", "sent", "refused", "unknown", "not_sent"]
    assert records[0] == {
        "file": str(paths[0]),
        "status": "sent",
        "code": None,
        "diagnostic": None,
        "error": None,
        "refused": [],
        "attempts": 1,
    }
    assert records[1]["refused"] == [
        {"address": "refused@example.org", "code": 550, "diagnostic": "5.1.1 No such user"}
    ]
    assert (records[2]["code"], records[2]["diagnostic"]) == (554, "5.7.1 Spam")
    assert records[3]["error"] == "DeliveryUnknownError"
    assert (records[4]["code"], records[4]["error"]) == (501, "InvalidInputError")


# -- bad pool options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--connections", "0"], "max_connections"),
        (["--max-per-connection", "0"], "max_messages_per_connection"),
        (["--rate", "0"], "rate"),
        (["--rate", "-2"], "rate"),
        (["--rate-burst", "3"], "rate_burst"),  # without --rate
        (["--rate", "5", "--rate-burst", "0"], "rate_burst"),
        (["--retry", "0"], "attempts"),
        (["--deadline", "-1"], "deadline"),
        (["--connections", "many"], "invalid int value"),
    ],
)
def test_bad_pool_options_exit_64_before_any_connection(
    tmp_path, capsys, pipe_stdin, options, said
):
    path = write(tmp_path, "m.eml")
    with ScriptedServer() as server:
        code = batch(server, *options, str(path))
        server.wait_idle()
        assert server.connections == 0 and server.sessions == []
    assert code == 64
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


# -- progress ---------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal(tmp_path, monkeypatch, capsys, pipe_stdin):
    ticks = itertools.count(0, 1.0)  # every update a second later: each one drawn
    monkeypatch.setattr(cli_batch, "_clock", lambda: next(ticks))
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    paths = [write(tmp_path, "0.eml"), write(tmp_path, "1.eml", to="perm@example.org")]
    paths += [write(tmp_path, f"{i}.eml") for i in range(2, 12)]
    with ScriptedServer(rules()) as server:
        assert batch(server, *map(str, paths)) == 2
    text = terminal.getvalue()
    assert "\r[ 1/12] 1 sent, 0 not sent, 0 unknown" in text
    assert "\r[ 2/12] 1 sent, 1 not sent, 0 unknown" in text
    assert "\r[12/12] 11 sent, 1 not sent, 0 unknown" in text
    # cleared before the summary, which is the last line
    cleared, summary = text.rsplit("\r", 1)
    assert cleared.endswith(" ") and set(cleared.rsplit("\r", 1)[1]) == {" "}
    assert summary == "smtplug: 12 messages: 11 sent, 1 not sent, 0 delivery unknown\n"
    assert len(capsys.readouterr().out.splitlines()) == 12  # stdout unchanged


def test_progress_line_is_throttled_but_shows_the_last(tmp_path, monkeypatch, pipe_stdin):
    monkeypatch.setattr(cli_batch, "_clock", lambda: 5.0)  # no time passes
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    paths = [write(tmp_path, f"{i}.eml") for i in range(5)]
    pipe_stdin("".join(f"{p}\n" for p in paths))
    with ScriptedServer() as server:
        assert batch(server, "-") == 0  # names from stdin: the total is not known
    text = terminal.getvalue()
    assert "\r[    1/?] 1 sent, 0 not sent, 0 unknown" in text  # the first
    assert "[    3/?]" not in text  # throttled
    assert "\r[    5/?] 5 sent, 0 not sent, 0 unknown" in text  # the last, before clearing
    assert text.splitlines()[-1].endswith(
        "smtplug: 5 messages: 5 sent, 0 not sent, 0 delivery unknown"
    )


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path, capsys, pipe_stdin):
    paths = [write(tmp_path, f"{i}.eml") for i in range(4)]
    with ScriptedServer() as server:
        assert batch(server, *map(str, paths)) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "[" not in err
    assert err == "smtplug: 4 messages: 4 sent, 0 not sent, 0 delivery unknown\n"


def test_no_progress_line_with_quiet(tmp_path, monkeypatch, pipe_stdin):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with ScriptedServer() as server:
        assert batch(server, "--quiet", str(write(tmp_path, "q.eml"))) == 0
    assert terminal.getvalue() == "smtplug: 1 message: 1 sent, 0 not sent, 0 delivery unknown\n"


# -- Ctrl-C -----------------------------------------------------------------------------


class CtrlC(io.StringIO):
    """stdout on which Ctrl-C comes at the lines numbered in ``at``: a
    KeyboardInterrupt raised while the line is printed (the line is not
    printed), or, with ``real``, a real SIGINT once it is printed."""

    def __init__(self, *at: int, real: bool = False) -> None:
        super().__init__()
        self.at = at
        self.real = real
        self.lines = 0

    def write(self, text: str) -> int:
        if text == "\n":
            return super().write(text)
        self.lines += 1
        if self.lines not in self.at:
            return super().write(text)
        if not self.real:
            raise KeyboardInterrupt
        written = super().write(text)
        signal.raise_signal(signal.SIGINT)
        return written


def interrupted(tmp_path, monkeypatch, out: CtrlC, files: int, connections: int):
    """``send-many`` of ``files`` messages over ``connections``, printing to
    ``out`` (which interrupts it): the exit status, the paths, the subjects
    the server got, and the server."""
    monkeypatch.setattr(sys, "stdout", out)
    paths = [write(tmp_path, f"{i:02}.eml") for i in range(files)]
    with ScriptedServer() as server:
        code = batch(server, "--connections", str(connections), *map(str, paths))
        got = subjects(server)
    return code, paths, got, server


def test_ctrl_c_stops_taking_messages_exit_130(tmp_path, monkeypatch, capsys, pipe_stdin):
    out = CtrlC(3)
    code, paths, got, server = interrupted(tmp_path, monkeypatch, out, 30, 1)
    assert code == 130
    assert out.getvalue().splitlines() == [f"{p}: sent to 1 recipient" for p in paths[:2]]
    # those in flight were finished (each once, none cut), no new ones taken
    assert 3 <= len(got) < len(paths)
    assert sorted(got) == [p.name for p in paths[: len(got)]]
    assert all(t.complete for s in server.sessions for t in s.transactions)
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("smtplug: interrupted: 2 messages: 2 sent")


def test_a_first_ctrl_c_lists_every_message_taken_with_its_outcome(
    tmp_path, monkeypatch, capsys, pipe_stdin
):
    out = CtrlC(2, real=True)
    before = signal.getsignal(signal.SIGINT)
    code, paths, got, _ = interrupted(tmp_path, monkeypatch, out, 40, 2)
    assert code == 130
    assert signal.getsignal(signal.SIGINT) is before  # (given back)
    # Every message the server has is listed, with its own outcome: nothing
    # was taken and then left unreported; the files after them were not sent.
    lines = out.getvalue().splitlines()
    assert 2 <= len(got) < len(paths)
    assert lines == [f"{p}: sent to 1 recipient" for p in paths[: len(got)]]
    assert sorted(got) == [p.name for p in paths[: len(got)]]
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"smtplug: interrupted: {len(got)} messages: {len(got)} sent")
    assert "every message taken was finished and is listed" in err[-1]


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, capsys, pipe_stdin):
    out = CtrlC(2, 3, real=True)
    code, paths, got, server = interrupted(tmp_path, monkeypatch, out, 40, 2)
    assert code == 130
    assert len(out.getvalue().splitlines()) == 3 and len(got) < len(paths)
    assert all(t.complete for s in server.sessions for t in s.transactions)
    err = capsys.readouterr().err.splitlines()
    assert "the messages in flight were finished (not listed)" in err[-1]


# -- help, and a real subprocess ---------------------------------------------------------


def test_help_shares_sends_option_groups_and_states_the_precedence(capsys):
    assert main(["send-many", "--help"]) == 0
    text = capsys.readouterr().out
    for group in ("envelope:", "pool:", "server:", "TLS:", "authentication:", "output:"):
        assert f"\n{group}\n" in text
    assert "exit status (the first that applies, in this order):" in text
    order = [text.index(f"\n  {code:<3} ") for code in ("4", "2", "3", "1", "0")]
    assert order == sorted(order)
    assert "--insecure-no-verify" in text and "--password-file" in text
    assert main(["--help"]) == 0
    assert "send-many" in capsys.readouterr().out


def test_python_m_smtplug_send_many_subprocess(tmp_path):
    outbox = tmp_path / "outbox"
    paths = [write(outbox, f"p{i}.eml") for i in range(8)]
    with ScriptedServer() as server:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "smtplug",
                "send-many",
                *("--server", f"127.0.0.1:{server.port}", "--no-tls"),
                *("--connections", "2", str(outbox)),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        got = subjects(server)
    assert done.returncode == 0, done.stderr
    assert sorted(got) == [p.name for p in paths]
    assert done.stdout.splitlines() == [f"{p}: sent to 1 recipient" for p in paths]
    assert done.stderr == "smtplug: 8 messages: 8 sent, 0 not sent, 0 delivery unknown\n"
    assert len(server.sessions) <= 2


# -- large files: streamed from the open file, closed once reported -------------------


def test_a_large_file_is_streamed_and_closed(tmp_path, monkeypatch, capsys, pipe_stdin):
    big = tmp_path / "big.eml"
    line = b"x" * 76 + b"\r\n"
    body = line * ((3 << 20) // len(line))  # 3 MiB: more than is read whole
    big.write_bytes(
        b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n" + body
    )
    small = write(tmp_path, "small.eml")
    handed: list[object] = []
    real = cli_batch._read

    def recording(name: str) -> object:
        data = real(name)
        handed.append(data)
        return data

    monkeypatch.setattr(cli_batch, "_read", recording)
    with ScriptedServer() as server:
        code = batch(server, "--connections", "2", str(big), str(small))
        server.wait_idle()
        contents = sorted(
            (t.content for s in server.sessions for t in s.transactions if t.complete), key=len
        )
    assert code == 0, capsys.readouterr().err
    assert isinstance(handed[1], bytes)  # the small one: read whole
    stream = handed[0]
    assert hasattr(stream, "read") and stream.closed  # the large one: a file, closed after
    assert len(contents) == 2 and contents[1].endswith(body)


def test_a_large_file_that_is_not_a_message_is_refused(tmp_path, capsys, pipe_stdin):
    big = tmp_path / "noise.bin"
    big.write_bytes(b"\x00\x01" * (1 << 20))
    with pytest.raises(cli_batch.InvalidInputError, match="does not begin with a header field"):
        cli_batch._read(str(big))
