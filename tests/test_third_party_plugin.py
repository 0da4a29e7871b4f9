"""A third party's plugin, installed as its own distribution into a fresh venv.

The example distribution (tests/thirdparty/smtplug-x-test) registers the SASL
mechanism X-TEST through the entry-point group ``smtplug``. The test builds a
new virtual environment, installs smtplug and that distribution into it, and
shows that ``sendmessage`` there negotiates X-TEST with a server that offers
it and that ``smtplug plugins`` lists it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = Path(__file__).with_name("thirdparty") / "smtplug-x-test"


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory):
    base = tmp_path_factory.mktemp("third-party")
    source = base / "smtplug-x-test"
    shutil.copytree(EXAMPLE, source)
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(ROOT), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.fail(f"pip install failed:\n{install.stdout}\n{install.stderr}")
    return env_dir


def test_fresh_venv_negotiates_the_third_party_mechanism(plugin_venv, make_server):
    server = make_server(
        auth_users={"alice": "wonderland"}, auth_mechanisms=["PLAIN", "SCRAM-SHA-256", "X-TEST"]
    )
    script = textwrap.dedent(
        f"""
        import smtplug
        result = smtplug.sendmessage(
            "From: a@example.com\\nTo: b@example.org\\nSubject: x\\n\\nhi\\n",
            servers=["127.0.0.1"], ports=[{server.port}], client="localhost",
            username="alice", password="wonderland", timeout=10,
        )
        print("accepted", result.accepted)
        """
    )
    python = plugin_venv / "bin" / "python"
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "accepted True" in run.stdout
    assert server.sessions[-1].authenticated == ("X-TEST", "alice")
    # The test process's own smtplug knows nothing of X-TEST: it came from the venv.
    import smtplug.plugins

    assert "X-TEST" not in smtplug.plugins.build_registry().sasl_mechanisms


def test_smtplug_plugins_lists_it(plugin_venv):
    run = subprocess.run(
        [str(plugin_venv / "bin" / "smtplug"), "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "x-test  (smtplug_x_test, from smtplug-x-test)" in run.stdout
    assert "SASL mechanisms: X-TEST" in run.stdout
    assert sys.executable != str(plugin_venv / "bin" / "python")
