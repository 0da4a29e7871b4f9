"""``--transport`` on the command line: ``smtplug send`` and ``smtplug
send-many`` to aiosmtpd's real LMTP server, over TCP and over a Unix socket
given as ``--server /path`` (or ``unix:/path``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtplug.cli import main
from test_cli_batch import write
from test_lmtp import Handler, LMTPServer

A, B = "a@example.org", "b@example.org"


def send_lmtp(server: LMTPServer, *more: str) -> int:
    """``smtplug send --transport lmtp`` to ``server`` over TCP, to A and B."""
    return main(
        [
            "send",
            "--transport",
            "lmtp",
            "--no-tls",
            *("--server", f"127.0.0.1:{server.port}"),
            *("--from", "alice@example.com", "--to", A, "--to", B),
            *more,
        ]
    )


def test_send_over_lmtp_tcp(capsys: pytest.CaptureFixture[str]) -> None:
    handler = Handler()
    with LMTPServer(handler) as server:
        code = send_lmtp(server, "--subject", "over lmtp")
    assert code == 0, capsys.readouterr().err
    ((sender, rcpts, content),) = handler.received
    assert (sender, rcpts) == ("alice@example.com", [A, B])
    assert b"Subject: over lmtp" in content
    assert server.hellos  # LHLO, not EHLO


def test_send_over_lmtp_a_recipient_refused_after_the_dot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # LMTP answers each recipient after the dot: a refusal there is a
    # partial delivery (exit 1), whatever --atleastone says.
    handler = Handler({B: "550 5.1.1 <b@example.org> no such mailbox"})
    with LMTPServer(handler) as server:
        code = send_lmtp(server)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "b@example.org" in err and "550" in err


@pytest.mark.parametrize("prefix", ["", "unix:"])
def test_send_many_over_an_lmtp_unix_socket(
    tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lmtp.sock"
    files = [write(tmp_path / "out", f"{i}.eml", to=A) for i in range(5)]
    handler = Handler()
    with LMTPServer(handler, path):
        code = main(
            [
                "send-many",
                "--transport",
                "lmtp",
                "--no-tls",
                "--connections",
                "2",
                "--server",
                f"{prefix}{path}",
                *map(str, files),
            ]
        )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [f"{file}: sent to 1 recipient" for file in files]
    assert sorted(content.split(b"Subject: ")[1][:5] for _, _, content in handler.received) == [
        f"{i}.eml".encode() for i in range(5)
    ]


def test_an_unknown_transport_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["send", "--transport", "no-such", "--to", A, "--from", A, "--no-tls"])
    assert code == 64
    err = capsys.readouterr().err
    assert "'no-such' transport plugin, which is not installed" in err
    assert "'lmtp'" in err  # (the installed ones are named)


def test_a_socket_path_without_lmtp_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["send", "--server", str(tmp_path / "x.sock"), "--to", A, "--from", A, "--no-tls"])
    assert code == 64
    assert "invalid server name" in capsys.readouterr().err
