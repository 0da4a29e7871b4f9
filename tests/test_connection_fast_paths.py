"""The per-connection shortcuts take exactly the decisions of the paths they skip.

* The TLS file check loads no SSL context when there is no file to load (the
  default ``usetls=True`` used to build, and throw away, one per call); a
  file that cannot be loaded still fails before any connection, with both
  backends.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

import smtplug
import smtplug_plugins._tls as tls_helpers
from mockstream import MockServer
from smtplug import api, plugins
from smtplug.connect import ConnectionPlan
from smtplug.options import ClientOptions, build

BACKENDS = ["stdlib"]
try:  # (the pyopenssl backend is an optional extra)
    import OpenSSL  # noqa: F401

    BACKENDS.append("pyopenssl")
except ImportError:  # pragma: no cover
    pass


def _mock_options(server: MockServer, **extra: Any) -> dict[str, Any]:
    return {
        "servers": ["127.0.0.1"],
        "client": "localhost",
        "plugins": [server.plugin()],
        "block_plugins": ["plain"],
        **extra,
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tls_file_no_probe_context(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    made: list[object] = []
    real = ssl.SSLContext

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(tls_helpers.ssl, "SSLContext", counting)
    tls_helpers.check_tls_files(smtplug.interfaces.TLSOptions())
    smtplug.Client(servers=["127.0.0.1"], usetls=True, tls_backend=backend)
    assert made == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", ["cafile", "client_cert"])
def test_unloadable_tls_file_fails_before_connecting(
    tmp_path: Path, backend: str, option: str
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    server = MockServer()
    with pytest.raises(smtplug.InvalidInputError, match="cannot be loaded"):
        smtplug.sendmessage(
            b"Subject: x\r\n\r\nbody\r\n",
            originator="a@example.org",
            recipients=["b@example.org"],
            tls_backend=backend,
            **{option: str(junk)},
            **_mock_options(server),
        )
    assert server.sessions == []


# --- the checked setup, memoised on its inputs -----------------------------------------


def _setup(memo: bool, **given: Any) -> api.Setup:
    if not memo:
        api._SETUPS.clear()
    return api.setup(build(ClientOptions, given))


def _fields(plan: Any) -> dict[str, Any]:
    return {
        f.name: getattr(plan, f.name)
        for f in dataclasses.fields(plan)
        if f.name not in ("tls_sessions", "transport_options")
    }


SIMPLE = [
    {"servers": ["127.0.0.1"], "client": "localhost", "usetls": False},
    {"servers": "localhost"},
    {"servers": ("a.example", "b.example"), "ports": [2525], "timeout": 3, "maxsecs": 9.5},
    {"servers": ["127.0.0.1"], "usetls": True, "tlspolicy": "require", "tls_verify": False},
    {"servers": ["127.0.0.1"], "tlsimport": True, "deadline": 4.0, "block_plugins": ["lmtp"]},
]


@pytest.mark.parametrize("given", SIMPLE)
def test_memoised_setup_is_the_checked_one(monkeypatch: pytest.MonkeyPatch, given: Any) -> None:
    calls: list[object] = []
    real = api._plan
    monkeypatch.setattr(api, "_plan", lambda *a, **k: calls.append(a) or real(*a, **k))
    api._SETUPS.clear()
    first = api.setup(build(ClientOptions, given))
    again = api.setup(build(ClientOptions, given))
    assert len(calls) == 1  # the second one took the memo
    fresh = _setup(False, **given)
    for built in (first, again):
        assert built.registry is fresh.registry
        assert built.limits == fresh.limits
        assert _fields(built.plan) == _fields(fresh.plan)
        options = dict(built.plan.transport_options)
        assert options.pop("tls_sessions") is built.plan.tls_sessions
        expected = dict(fresh.plan.transport_options)
        expected.pop("tls_sessions")
        assert options == expected
    # Each client its own TLS sessions, observers and transport options.
    assert again.plan.tls_sessions is not first.plan.tls_sessions
    assert again.plan.transport_options is not first.plan.transport_options
    assert again.observers is not first.observers


@pytest.mark.parametrize(
    "good, bad",
    [
        ({"usetls": True}, {"usetls": 1}),
        ({"usetls": False}, {"usetls": 0}),
        ({"ports": 25}, {"ports": 25.0}),
        ({"timeout": 5}, {"timeout": True}),
        ({"servers": ["a.example"]}, {"servers": ["a example"]}),
        ({"servers": ["a.example"]}, {"servers": [["a.example"]]}),
        ({"servers": ["a.example"]}, {"servers": ("a.example", 25)}),
        ({"usetls": True, "tls_backend": "stdlib"}, {"usetls": True, "tls_backend": ("stdlib",)}),
        ({"client": "localhost"}, {"client": ["localhost"]}),
    ],
)
def test_memo_never_lets_bad_input_through(good: Any, bad: Any) -> None:
    api._SETUPS.clear()
    api.setup(build(ClientOptions, {"servers": ["127.0.0.1"], **good}))
    with pytest.raises(smtplug.InvalidInputError):
        api.setup(build(ClientOptions, {"servers": ["127.0.0.1"], **bad}))


@pytest.mark.parametrize(
    "given",
    [
        {"username": "u", "password": "p", "insecure_cleartext_auth": True},
        {"capath": os.path.dirname(__file__)},
        {"tlspolicy": lambda code, diagnostic: "insecure"},
        {"timeouts": {"connect": 3.0}},
        {"plugins": [MockServer().plugin()], "block_plugins": ["plain"]},
        {"retry": smtplug.Retry()},
        {"tls_context": ssl.create_default_context()},
    ],
)
def test_not_memoised(given: Any) -> None:
    """Credentials are not kept process-wide, files are checked at each call,
    objects (callables, plugins, mappings) are not keys."""
    api._SETUPS.clear()
    api.setup(build(ClientOptions, {"servers": ["127.0.0.1"], **given}))
    assert api._SETUPS == {}


def test_memo_follows_a_rebuilt_registry() -> None:
    given = {"servers": ["127.0.0.1"], "usetls": False}
    api._SETUPS.clear()
    first = api.setup(build(ClientOptions, given))
    plugins._shared_registry.cache_clear()
    try:
        again = api.setup(build(ClientOptions, given))
        assert again.registry is not first.registry
        assert again.registry is plugins.build_registry()
        assert again.plan.transport is again.registry.transports["plain"]
    finally:
        api._SETUPS.clear()


def test_memo_still_asks_the_tls_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {"servers": ["127.0.0.1"], "usetls": True}
    api._SETUPS.clear()
    api.setup(build(ClientOptions, given))
    backend = plugins.build_registry().tls_backends["stdlib"]
    seen: list[object] = []
    monkeypatch.setattr(type(backend), "check", lambda self, options: seen.append(options))
    api.setup(build(ClientOptions, given))
    assert len(seen) == 1 and api._SETUPS


# --- the RCPT lines of a transaction, encoded in one pass ------------------------------

from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from smtplug.protocol import commands  # noqa: E402

_ADDRESS = st.text(max_size=40) | st.sampled_from(
    ["a@example.org", "x" * 300, '"a b"@example.org', "ü@example.org", "a\r\n@x", "", "<a>"]
)


def _one_by_one(paths: list[Any], smtputf8: bool) -> tuple[str, object]:
    try:
        return "ok", [commands.rcpt(path, smtputf8=smtputf8) for path in paths]
    except smtplug.SMTPError as exc:
        return type(exc).__name__, str(exc)


@given(st.lists(_ADDRESS | st.integers(), max_size=5), st.booleans())
@example(["a@example.org", "b@example.org"], False)
@example(["a@example.org", "ü@example.org"], False)
@example(["a@example.org", "ü@example.org"], True)
def test_rcpts_is_rcpt_for_each(paths: list[Any], smtputf8: bool) -> None:
    try:
        got: tuple[str, object] = "ok", commands.rcpts(paths, smtputf8=smtputf8)
    except smtplug.SMTPError as exc:
        got = type(exc).__name__, str(exc)
    assert got == _one_by_one(paths, smtputf8)


# --- the hello's action, made once per name --------------------------------------------

from smtplug import session  # noqa: E402
from smtplug.actions import Send  # noqa: E402
from smtplug.interfaces import SMTP  # noqa: E402


@pytest.mark.parametrize("client", ["localhost", "mail.example.org", "[127.0.0.1]"])
def test_hello_action_is_the_encoded_command(client: str) -> None:
    timeouts = session.Timeouts()
    for _ in range(2):  # (made, then remembered)
        step = session.hello(client, timeouts, SMTP)
        action = next(step)
        line = commands.hello("EHLO", client)
        assert action == Send(line, line[:-2].decode(), timeouts.command)


@pytest.mark.parametrize("client", ["", "a b", "x\r\nRSET", "ü.example"])
def test_hello_refuses_a_bad_name_every_time(client: str) -> None:
    for _ in range(2):
        with pytest.raises(smtplug.InvalidInputError):
            next(session.hello(client, session.Timeouts(), SMTP))


def test_a_fresh_setup_carries_every_field_of_the_plan() -> None:
    """``Setup.fresh`` copies the plan field by field (faster than
    ``dataclasses.replace``): a field added to ConnectionPlan later must not
    be dropped back to its default."""
    built = api.setup(build(ClientOptions, {"servers": ["127.0.0.1"], "usetls": False}))
    marks = {f.name: object() for f in dataclasses.fields(ConnectionPlan)}
    marks["transport_options"] = {"tls_sessions": {}, "mark": object()}
    marked = dataclasses.replace(built, plan=dataclasses.replace(built.plan, **marks))
    fresh = marked.fresh(build(ClientOptions, {"servers": ["127.0.0.1"], "usetls": False}))
    for name, mark in marks.items():
        if name in ("tls_sessions", "transport_options"):
            continue
        assert getattr(fresh.plan, name) is mark, name
    assert fresh.plan.transport_options["mark"] is marks["transport_options"]["mark"]
    assert fresh.plan.transport_options["tls_sessions"] is fresh.plan.tls_sessions
