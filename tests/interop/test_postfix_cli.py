"""``python -m smtplug send`` end to end against the real Postfix on loopback:
STARTTLS with --cafile, implicit TLS, AUTH with the password from a file and
from the environment, refused recipients and what the exit status says."""

from __future__ import annotations

import base64
import email
import email.policy
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.interop


def run(
    *args: str, env: dict[str, str] | None = None, command: str = "send", wait: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m smtplug COMMAND --timeout 30 ARGS``, without the caller's
    SMTPLUG_* variables (a password there must not leak into a test)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SMTPLUG_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "smtplug", command, "--timeout", "30", *args],
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=wait,
        check=False,
    )


def delivered(pf, count: int = 1):
    raw = pf.wait_for_messages(count)
    return [email.message_from_bytes(m, policy=email.policy.default) for m in raw]


def envelope(subject: str, *to: str) -> list[str]:
    recipients = to or ("bob@example.org",)
    args = ["--from", "alice@example.com", "--subject", subject, "--body", "Hello, Postfix."]
    for address in recipients:
        args += ["--to", address]
    return args


def secrets(password: str) -> list[str]:
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0alice\0{password}".encode()).decode(),
    ]


def test_starttls_with_cafile(postfix_clean):
    pf = postfix_clean
    done = run(
        *("--server", f"{pf.host}:{pf.plain_port}", "--cafile", pf.ca, "--tls-policy", "require"),
        *envelope("cli starttls"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("smtplug: sent to 1 recipient")
    (got,) = delivered(pf)
    assert got["Subject"] == "cli starttls"
    assert got["Return-Path"] == "<alice@example.com>"
    assert "TLS" in got["Received"]


def test_starttls_without_the_ca_is_69(postfix_clean):
    pf = postfix_clean
    done = run("--server", f"{pf.host}:{pf.plain_port}", *envelope("unverified"))
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("smtplug: ConnectError: ")
    assert "Traceback" not in done.stderr
    assert pf.messages() == []


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
def test_implicit_tls(postfix_clean, backend):
    pf = postfix_clean
    done = run(
        *("--tls", "--server", f"{pf.host}:{pf.smtps_port}", "--cafile", pf.ca),
        *("--tls-backend", backend),
        *envelope(f"cli implicit {backend}"),
    )
    assert done.returncode == 0, done.stderr
    (got,) = delivered(pf)
    assert got["Subject"] == f"cli implicit {backend}"


def auth_server(pf) -> list[str]:
    return [
        *("--server", f"{pf.host}:{pf.submission_port}", "--cafile", pf.ca),
        *("--tls-policy", "require", "--auth", pf.user),
    ]


def test_auth_password_from_file(postfix_clean, tmp_path):
    pf = postfix_clean
    offset = pf.log_offset()
    path = tmp_path / "password"
    path.write_text(pf.password + "\n")
    done = run(*auth_server(pf), "--password-file", str(path), *envelope("cli auth file"))
    assert done.returncode == 0, done.stderr
    (got,) = delivered(pf)
    assert got["Subject"] == "cli auth file"
    pf.wait_for_log(f"sasl_username={pf.user}", offset)


@pytest.mark.parametrize("variable", ["SMTPLUG_PASSWORD", "MY_SMTP_PASSWORD"])
def test_auth_password_from_environment_with_transcript(postfix_clean, variable):
    pf = postfix_clean
    choose = [] if variable == "SMTPLUG_PASSWORD" else ["--password-env", variable]
    done = run(
        *auth_server(pf),
        *choose,
        *("--mechanism", "PLAIN", "--transcript"),
        *envelope(f"cli auth env {variable}"),
        env={variable: pf.password},
    )
    assert done.returncode == 0, done.stderr
    assert "--> AUTH PLAIN" in done.stderr and "<-- 235" in done.stderr
    for secret in secrets(pf.password):
        assert secret not in done.stderr and secret not in done.stdout
    (got,) = delivered(pf)
    assert got["Subject"] == f"cli auth env {variable}"


def test_auth_wrong_password_is_2(postfix_clean):
    pf = postfix_clean
    wrong = pf.password + "-wrong"
    done = run(*auth_server(pf), *envelope("wrong"), env={"SMTPLUG_PASSWORD": wrong})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("smtplug: AuthenticationError: 535 ")
    for secret in secrets(wrong):
        assert secret not in done.stderr
    assert pf.messages() == []


def test_refused_recipient_nothing_sent_is_2(postfix_clean):
    pf = postfix_clean
    refused = f"nobody@{pf.refused_domain}"
    done = run(
        *("--server", f"{pf.host}:{pf.plain_port}", "--cafile", pf.ca),
        *envelope("refused", "bob@example.org", refused),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("smtplug: not sent (recipients refused")
    assert f"{refused}: 550 5.1.1" in done.stderr
    assert pf.messages() == []


def test_refused_recipient_with_atleastone_is_1(postfix_clean):
    pf = postfix_clean
    refused = f"nobody@{pf.refused_domain}"
    done = run(
        *("--server", f"{pf.host}:{pf.plain_port}", "--cafile", pf.ca, "--atleastone"),
        *envelope("partly", "bob@example.org", refused),
    )
    assert done.returncode == 1, done.stderr
    assert f"refused: {refused}: 550 5.1.1" in done.stderr
    (got,) = delivered(pf)
    assert got["Subject"] == "partly"


def test_temporarily_refused_recipient_is_3(postfix_clean):
    pf = postfix_clean
    done = run(
        *("--server", f"{pf.host}:{pf.plain_port}", "--cafile", pf.ca),
        *envelope("later", f"someone@{pf.tempfail_domain}"),
    )
    assert done.returncode == 3, done.stderr
    assert "450 4.2.0" in done.stderr
    assert pf.messages() == []
