"""Typed events (smtplug.events): every kind the core emits, in a scenario,
with its fields; observer plugins receive the objects; str() is the old
transcript text; repr stays short and holds no secret."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

import smtplug
from apis import both_apis
from scripted import client_for, send_to
from smtplug import events
from smtplug.interfaces import ConnectionInfo, TLSInfo
from smtplug.testing import CLOSE, Answer, ScriptedServer
from tlsfixtures import server_context, tls_ca, write_files

pytestmark = both_apis

PASSWORD = "s3cret-Pa55word"
TOKEN = "ya29.stale-token"


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "events"
    msg.set_content("hello\n")
    return msg


class Collector:
    """An observer plugin, passed with ``plugins=[...]``."""

    def __init__(self) -> None:
        self.events: list[tuple[ConnectionInfo, object]] = []

    @smtplug.hookimpl
    def smtplug_on_event(self, info: ConnectionInfo, event: object) -> None:
        self.events.append((info, event))

    def of(self, cls: type[events.Event]) -> list[Any]:
        return [event for _, event in self.events if isinstance(event, cls)]


@pytest.fixture(scope="module")
def certs():
    return tls_ca()


@pytest.fixture(scope="module")
def context_for(certs, tmp_path_factory):
    directory = tmp_path_factory.mktemp("server-files")
    return lambda name: server_context(getattr(certs, name), directory)


@pytest.fixture(scope="module")
def cafile(certs, tmp_path_factory):
    return write_files(certs, tmp_path_factory.mktemp("client-files")).cafile


# --- one scenario per kind -----------------------------------------------------------------
# Each returns the collector after a send; the test checks the kind's fields.


def plain(**options: Any) -> tuple[Collector, ScriptedServer]:
    seen = Collector()
    with ScriptedServer() as server:
        assert send_to([server], message(), plugins=[seen], **options).accepted
        server.wait_idle()
    return seen, server


def check_connecting(_: Any) -> None:
    seen, server = plain()
    (event,) = seen.of(events.Connecting)
    assert (event.server, event.port) == ("127.0.0.1", server.port)
    assert str(event) == f"Trying 127.0.0.1:{server.port}..."


def check_closed(_: Any) -> None:
    seen, _server = plain()
    assert [str(e) for e in seen.of(events.Closed)] == ["closed"]
    assert isinstance(seen.events[-1][1], events.Closed)


def check_server_failed(_: Any) -> None:
    seen = Collector()
    with (
        ScriptedServer(greeting=b"554 5.3.2 go away\r\n") as first,
        ScriptedServer() as second,
    ):
        assert send_to([first, second], message(), plugins=[seen]).accepted
    (event,) = seen.of(events.ServerFailed)
    assert (event.server, event.port) == ("127.0.0.1", first.port)
    assert isinstance(event.error, smtplug.SMTPError) and event.error.code == 554
    assert str(event) == f"server failed: {event.error}"
    assert event.log_fields()["code"] == 554


def check_failover(_: Any) -> None:
    seen = Collector()
    busy = {"MAIL": Answer(b"421 4.3.2 busy\r\n", then=CLOSE)}
    with ScriptedServer(busy) as first, ScriptedServer() as second:
        assert send_to([first, second], message(), plugins=[seen]).accepted
    (event,) = seen.of(events.Failover)
    assert (event.server, event.port) == ("127.0.0.1", first.port)
    assert event.error.code == 421 and "busy" in event.error.diagnostic
    assert str(event).endswith("; trying the next server")


def check_reconnecting(_: Any) -> None:
    seen = Collector()
    idle = {("MAIL", 2): Answer(b"421 4.4.2 idle too long\r\n", then=CLOSE)}
    with ScriptedServer(idle) as server, client_for(server, plugins=[seen]) as client:
        assert client.sendmessage(message()).accepted
        assert client.sendmessage(message()).accepted
    (event,) = seen.of(events.Reconnecting)
    assert event.diagnostic is not None and "idle too long" in event.diagnostic
    assert not event.pooled
    assert str(event) == f"the kept session is gone ({event.diagnostic}); reconnecting"


def check_tls_not_used(_: Any) -> None:
    seen, _server = plain(usetls=True)
    (event,) = seen.of(events.TLSNotUsed)
    assert (event.reason, event.code, event.policy, event.decision) == (
        "absent",
        454,
        "opportunistic",
        "insecure",
    )
    assert event.downgraded
    assert str(event) == (
        "TLS absent: 127.0.0.1 does not offer STARTTLS; policy opportunistic says insecure"
    )


def check_tls_established(fixtures: Any) -> None:
    seen = Collector()
    with ScriptedServer(tls_context=fixtures.context_for("server")) as server:
        result = send_to([server], message(), plugins=[seen], usetls=True, cafile=fixtures.cafile)
    (event,) = seen.of(events.TLSEstablished)
    assert event.tls is result.tls or event.tls == result.tls
    assert event.tls.verified and event.tls.backend == "stdlib"
    assert str(event).startswith(f"TLS established: {event.tls.version} ")
    assert str(event).endswith("(stdlib, certificate verified)")
    assert event.log_fields()["tls_verified"] is True
    assert not seen.of(events.TLSVerificationOff)


def check_tls_verification_off(fixtures: Any) -> None:
    seen = Collector()
    with ScriptedServer(tls_context=fixtures.context_for("self_signed")) as server:
        send_to([server], message(), plugins=[seen], usetls=True, tls_verify=False)
    (event,) = seen.of(events.TLSVerificationOff)
    assert str(event).startswith("WARNING: tls_verify=False: ")
    assert "NOT verified" in str(seen.of(events.TLSEstablished)[0])


def check_tls_not_retried(fixtures: Any) -> None:
    seen = Collector()
    with ScriptedServer(tls_context=fixtures.context_for("untrusted")) as server:
        result = send_to(
            [server], message(), plugins=[seen], usetls=True, tlspolicy=lambda c, d: "insecure"
        )
    assert result.accepted and result.tls is None
    (refusal,) = seen.of(events.TLSNotUsed)
    assert refusal.reason == "certificate" and refusal.decision == "insecure"
    assert refusal.policy == "<callable>"
    (event,) = seen.of(events.TLSNotRetried)
    assert str(event) == "STARTTLS not tried again: the policy chose plain text"
    assert len(seen.of(events.Connecting)) == 2


def check_authenticated(_: Any) -> None:
    seen = Collector()
    with ScriptedServer(capabilities=["AUTH PLAIN LOGIN"]) as server:
        send_to([server], message(), plugins=[seen], username="alice", password=PASSWORD)
    (event,) = seen.of(events.Authenticated)
    assert event.mechanism in ("PLAIN", "LOGIN")
    assert str(event) == f"authenticated with {event.mechanism}"
    assert event.log_fields() == {"mechanism": event.mechanism}


def refused_login(seen: Collector) -> None:
    refuse = {"AUTH": b"535 5.7.8 no\r\n"}
    with (
        ScriptedServer(refuse, capabilities=["AUTH CRAM-MD5 PLAIN"]) as server,
        pytest.raises(smtplug.AuthenticationError),
    ):
        send_to([server], message(), plugins=[seen], username="alice", password=PASSWORD)


def check_auth_failed(_: Any) -> None:
    seen = Collector()
    refused_login(seen)
    (event,) = seen.of(events.AuthFailed)
    assert event.mechanism == "CRAM-MD5"
    assert str(event) == "authentication with CRAM-MD5 failed"


def check_auth_weaker_skipped(_: Any) -> None:
    seen = Collector()
    refused_login(seen)
    (event,) = seen.of(events.AuthWeakerSkipped)
    assert event.mechanism == "PLAIN"
    assert str(event) == (
        "not trying the weaker PLAIN after a failure on an unencrypted connection"
    )


def check_token_refresh(_: Any) -> None:
    seen = Collector()
    asked: list[bool] = []

    def provider(*, refused: bool = False) -> str:
        asked.append(refused)
        return TOKEN

    script = {("AUTH", 1): b"535 5.7.8 Bad token\r\n"}
    with ScriptedServer(script, capabilities=["AUTH XOAUTH2"]) as server:
        send_to(
            [server],
            message(),
            plugins=[seen],
            username="alice",
            oauth_token=provider,
            mechanisms=["XOAUTH2"],
        )
    assert asked == [False, True]
    (event,) = seen.of(events.TokenRefresh)
    assert event.mechanism == "XOAUTH2"
    assert str(event).startswith("XOAUTH2 refused the OAuth token; trying once more")
    assert [e.mechanism for e in seen.of(events.Authenticated)] == ["XOAUTH2"]


SCENARIOS: dict[str, Callable[[Any], None]] = {
    "connecting": check_connecting,
    "closed": check_closed,
    "server_failed": check_server_failed,
    "failover": check_failover,
    "reconnecting": check_reconnecting,
    "tls_not_used": check_tls_not_used,
    "tls_established": check_tls_established,
    "tls_verification_off": check_tls_verification_off,
    "tls_not_retried": check_tls_not_retried,
    "authenticated": check_authenticated,
    "auth_failed": check_auth_failed,
    "auth_weaker_skipped": check_auth_weaker_skipped,
    "token_refresh": check_token_refresh,
}


@dataclasses.dataclass
class Fixtures:
    context_for: Callable[[str], Any]
    cafile: Any


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_each_kind_is_emitted_with_its_fields(kind, context_for, cafile):
    SCENARIOS[kind](Fixtures(context_for, cafile))


def test_every_kind_has_a_scenario():
    assert set(SCENARIOS) == set(events.KINDS)
    for kind, cls in events.KINDS.items():
        assert cls.kind == kind and issubclass(cls, events.Event)
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_observers_get_only_typed_events_and_str_still_works(capsys):
    seen = Collector()
    with ScriptedServer({"RCPT": b"550 5.1.1 no\r\n"}) as server:
        send_to([server], message(), plugins=[seen], debug=True)
    err = capsys.readouterr().err
    assert seen.events
    for info, event in seen.events:
        assert isinstance(event, events.Event)
        assert isinstance(info, ConnectionInfo)
        # An observer written for text events: str(event), f"{event}".
        assert f"    ... {event}" in err.splitlines()
        assert f"{event}" == str(event)


def test_event_fields_and_records(caplog, context_for, cafile):
    caplog.set_level(logging.DEBUG, logger="smtplug")
    with ScriptedServer(tls_context=context_for("server")) as server:
        send_to([server], message(), usetls=True, cafile=cafile)
    found = [r for r in caplog.records if getattr(r, "smtplug_direction", None) == "event"]
    by_kind = {r.smtplug_event: r for r in found}
    assert {"connecting", "tls_established", "closed"} <= set(by_kind)
    tls = by_kind["tls_established"]
    assert tls.smtplug_tls_verified is True and tls.smtplug_tls_backend == "stdlib"
    assert tls.smtplug_tls_version.startswith("TLS")
    assert tls.smtplug_phase == "starttls"
    assert by_kind["connecting"].smtplug_phase == "connect"
    assert by_kind["closed"].smtplug_phase == "close"
    for record in found:
        assert not hasattr(record, "smtplug_peer_certificate")
        assert not hasattr(record, "smtplug_channel_bindings")


def test_repr_is_short_and_holds_no_secret():
    der = b"\x30\x82" + b"D" * 2000
    tls = TLSInfo(
        backend="stdlib",
        version="TLSv1.3",
        cipher="TLS_AES_256_GCM_SHA384",
        peer_certificate=der,
        verified=True,
        channel_bindings={"tls-exporter": b"B" * 32},
    )
    event = events.TLSEstablished(tls)
    error = smtplug.ResponseError("5.1.1 no such user", 550, command="RCPT TO:<x@y>")
    error.transcript = ("--> AUTH PLAIN <redacted>",) * 500
    result = smtplug.SendResult(
        [("x@y", 550, "5.1.1 no")],
        accepted=True,
        server="mx.example",
        port=25,
        tls=tls,
        transcript=("--> EHLO x",) * 500,
    )
    for text in (repr(tls), repr(event), repr(error), repr(result)):
        assert len(text) < 300, text
        assert "DDDD" not in text and "BBBB" not in text and "-->" not in text
    assert repr(error) == "ResponseError(550, '5.1.1 no such user')"
