"""Plugin discovery and the per-call registry."""

from __future__ import annotations

import pytest

import smtplug
from smtplug import InvalidInputError, PluginError
from smtplug.interfaces import Transport
from smtplug.plugins import build_registry, installed


def test_builtin_plain_is_found_through_the_entry_point_group():
    plugins = {p.name: p for p in installed()}
    assert "plain" in plugins
    assert plugins["plain"].value == "smtplug_plugins.plain"
    assert plugins["plain"].distribution == "smtplug"
    registry = build_registry()
    assert isinstance(registry.transports["plain"], Transport)


def test_block_removes_a_builtin_for_that_registry_only():
    assert "plain" not in build_registry(block=["plain"]).transports
    assert "plain" in build_registry().transports


def test_blocking_an_unknown_name_is_an_error():
    with pytest.raises(InvalidInputError, match="not installed"):
        build_registry(block=["plian"])


def test_misspelt_hook_fails_at_start_up():
    class Typo:
        @smtplug.hookimpl
        def smtplug_register_transprots(self):
            return []

    with pytest.raises(PluginError, match="unknown hook"):
        build_registry(extra=[Typo()])


def test_two_plugins_registering_one_name_is_an_error():
    class Dup:
        name = "plain"

        def connect(self, host, port, *, timeout, options):
            raise AssertionError

    class Plugin:
        @smtplug.hookimpl
        def smtplug_register_transports(self):
            return [Dup()]

    with pytest.raises(PluginError, match="two plugins register the transport 'plain'"):
        build_registry(extra=[Plugin()])


def test_nameless_registration_is_an_error():
    class Plugin:
        @smtplug.hookimpl
        def smtplug_register_tls_policies(self):
            return [object()]

    with pytest.raises(PluginError, match="without a name"):
        build_registry(extra=[Plugin()])


def test_named_policy_plugin_is_usable_by_name(smtp_server):
    decisions = []

    class Lenient:
        name = "lenient"

        def decide(self, failure):
            decisions.append(failure.kind)
            return "insecure"

    class Plugin:
        @smtplug.hookimpl
        def smtplug_register_tls_policies(self):
            return [Lenient()]

    registry = build_registry(extra=[Plugin()])
    assert "lenient" in registry.tls_policies
    # Unknown names are refused before connecting; known ones are used.
    with pytest.raises(InvalidInputError, match="no TLS policy named"):
        smtplug.sendmessage(
            "To: b@example.org\n\nx\n",
            originator="a@example.com",
            servers="127.0.0.1",
            ports=smtp_server.port,
            tlspolicy="lenient",
        )
    assert smtp_server.sessions == []
    result = smtplug.sendmessage(
        "To: b@example.org\n\nx\n",
        originator="a@example.com",
        servers="127.0.0.1",
        ports=smtp_server.port,
        tlspolicy="lenient",
        plugins=[Plugin()],
    )
    # A named policy is asked even when the server offers no STARTTLS.
    assert result.accepted and decisions == ["absent"]


def test_sasl_names_are_indexed_upper_case():
    class Mech:
        name = "x-test"
        strength = 1
        exposes_password = True

        def start(self, *, username, password, hostname):
            raise AssertionError

    class Plugin:
        @smtplug.hookimpl
        def smtplug_register_sasl_mechanisms(self):
            return [Mech()]

    assert "X-TEST" in build_registry(extra=[Plugin()]).sasl_mechanisms


def test_cli_lists_plugins(capsys):
    from smtplug.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "plain  (smtplug_plugins.plain, from smtplug)" in out
    assert "transports: plain" in out
    assert "asyncio transports: plain" in out


# -- plugins register cheaply: heavy packages are imported when chosen ---------


def test_each_lazy_stand_in_says_what_its_implementation_says():
    from smtplug_plugins import sasl_puresasl, sasl_scram, tls_pyopenssl

    for stand_in in (*sasl_puresasl.MECHANISMS, *sasl_scram.MECHANISMS):
        real = stand_in.implementation()
        assert (real.name, real.strength, real.exposes_password) == (
            stand_in.name,
            stand_in.strength,
            stand_in.exposes_password,
        )
    assert tls_pyopenssl.BACKEND.implementation().name == tls_pyopenssl.BACKEND.name


def test_a_plain_send_imports_no_tls_or_sasl_package():
    import subprocess
    import sys

    program = """
import sys
import smtplug
from smtplug.testing import ScriptedServer
with ScriptedServer() as server:
    smtplug.sendmessage(b"From: a@example.com\\r\\nTo: b@example.org\\r\\n\\r\\nhi\\r\\n",
                        servers="127.0.0.1", ports=server.port, usetls=False)
heavy = [m for m in ("OpenSSL", "cryptography", "service_identity", "scramp", "puresasl")
         if m in sys.modules]
print(",".join(heavy))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""


def test_choosing_a_backend_or_a_login_imports_its_package():
    import subprocess
    import sys

    program = """
import sys
import smtplug
from smtplug.plugins import build_registry
registry = build_registry()
registry.tls_backends["pyopenssl"].check(smtplug.interfaces.TLSOptions())
assert "OpenSSL" in sys.modules and "scramp" not in sys.modules
registry.sasl_mechanisms["SCRAM-SHA-256"].supported(
    smtplug.interfaces.SASLCredentials(username="u", password="p"))
assert "scramp" in sys.modules and "puresasl" not in sys.modules
registry.sasl_mechanisms["PLAIN"].supported(
    smtplug.interfaces.SASLCredentials(username="u", password="p"))
assert "puresasl" in sys.modules
"""
    subprocess.run([sys.executable, "-c", program], timeout=60, check=True)
