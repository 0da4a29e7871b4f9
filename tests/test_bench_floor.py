"""benchmarks/: the floor client (floor.py) and run.py's conditions (--pin, --message-kb).

The floor is what every benchmark scenario is compared with, so it must
deliver what it is given and check every reply: these tests send through it
to the in-process recording server and read what arrived. The last test runs
run.py itself for one tiny round against Postfix's smtp-sink. Nothing here
measures or asserts a time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import clients  # noqa: E402  (benchmarks/clients.py)
import floor  # noqa: E402  (benchmarks/floor.py)


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench_run = _load_run()

# Lines that need dot-stuffing, at the start and in the middle.
TRICKY = (
    b".first line starts with a dot\r\nFrom: a@example.com\r\nSubject: floor\r\n\r\n"
    b"body\r\n.\r\n..two dots\r\n. dot space\r\nlast line\r\n"
)


def _job(server, recipients, count, message=clients.SMALL_MESSAGE):
    return clients.Job("127.0.0.1", server.port, count, recipients, message=message, timeout=10)


def _check_delivered(server, sessions, count, recipients, message):
    assert len(server.sessions) == sessions
    delivered = [t for s in server.sessions for t in s.transactions if t.delivered]
    assert len(delivered) == count
    for transaction in delivered:
        assert transaction.mail_from == clients.FROM
        assert transaction.rcpt_tos == list(recipients)
        assert transaction.content == message  # un-dot-stuffed by the server: as given
    for session in server.sessions:
        assert session.commands[0] == "EHLO localhost"
        assert session.commands[-1] == "QUIT"


@pytest.mark.parametrize("message", [clients.SMALL_MESSAGE, clients.message_of(2), TRICKY])
def test_floor_new_connection_each(make_server, message):
    server = make_server(extra_ehlo=["PIPELINING"])
    clients.floor_per_connection(_job(server, clients.HUNDRED, 3, message))
    server.wait_idle()
    _check_delivered(server, 3, 3, clients.HUNDRED, message)
    # Dot-stuffed on the wire, the final "." once, and QUIT in the same flight.
    data = server.sessions[0].transactions[0].data_wire
    assert data.endswith(b"\r\n.\r\n") and data.count(b"\r\n.\r\n") == 1


@pytest.mark.parametrize("message", [clients.SMALL_MESSAGE, TRICKY])
def test_floor_kept_connection(make_server, message):
    server = make_server(extra_ehlo=["PIPELINING"])
    clients.floor_kept(_job(server, [clients.TO], 5, message))
    server.wait_idle()
    _check_delivered(server, 1, 5, [clients.TO], message)
    words = [c.split(" ", 1)[0] for c in server.sessions[0].commands]
    assert words == ["EHLO"] + ["MAIL", "RCPT", "DATA"] * 5 + ["QUIT"]  # no RSET needed


def test_floor_concurrent_connections(make_server):
    server = make_server(extra_ehlo=["PIPELINING"])
    clients.floor_concurrent(
        clients.Job("127.0.0.1", server.port, 10, [clients.TO], connections=3, timeout=10)
    )
    server.wait_idle()
    _check_delivered(server, 3, 10, [clients.TO], clients.SMALL_MESSAGE)


def test_floor_checks_every_reply(make_server):
    refusing = make_server(
        extra_ehlo=["PIPELINING"], refuse_rcpt={"r7@example.org": (550, "5.1.1 No such user")}
    )
    with pytest.raises(clients.DeliveryError, match=r"RCPT: 550 5\.1\.1 No such user"):
        clients.floor_per_connection(_job(refusing, clients.HUNDRED, 1))
    rejecting = make_server(extra_ehlo=["PIPELINING"], data_final_reply="554 5.7.1 rejected")
    with pytest.raises(clients.DeliveryError, match="end of data: 554"):
        clients.floor_kept(_job(rejecting, [clients.TO], 2))
    hanging_up = make_server(extra_ehlo=["PIPELINING"], close_after_data=True)
    with pytest.raises(clients.DeliveryError, match="closed the connection"):
        clients.floor_per_connection(_job(hanging_up, [clients.TO], 1))


def test_floor_needs_pipelining(make_server):
    server = make_server()  # aiosmtpd offers no PIPELINING by itself
    with pytest.raises(clients.DeliveryError, match="PIPELINING"):
        clients.floor_per_connection(_job(server, [clients.TO], 1))
    server.wait_idle()
    assert all(not s.transactions for s in server.sessions)


def test_dot_stuff():
    assert floor.dot_stuff(b".a\r\n.\r\nb\r\n..c") == b"..a\r\n..\r\nb\r\n...c\r\n"
    assert floor.dot_stuff(b"plain\r\n") == b"plain\r\n"


def test_message_sizes():
    assert clients.message_of(1) == clients.SMALL_MESSAGE
    for kb in (2, 3, 16):
        message = clients.message_of(kb)
        assert len(message) == kb * 1024
        assert message.startswith(clients.SMALL_MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        assert all(len(line) <= 998 for line in message.split(b"\r\n"))
        assert message.endswith(b"\r\n") and b"\r\n." not in message
    assert clients.body_octets(clients.SMALL_MESSAGE) == 828


def test_run_options_parse():
    default = bench_run.parse_args([])
    assert default.conditions == [bench_run.Condition(1, False)]
    assert bench_run.parse_args(["--pin"]).conditions == [bench_run.Condition(1, True)]
    both = bench_run.parse_args(["--pin", "both", "--message-kb", "1,2"])
    assert both.conditions == [
        bench_run.Condition(1, False),
        bench_run.Condition(2, False),
        bench_run.Condition(1, True),
        bench_run.Condition(2, True),
    ]
    # Scenario 4 sends its own big message: once per pinning, not per size.
    assert bench_run.conditions_for(4, both) == [
        bench_run.Condition(1, False),
        bench_run.Condition(1, True),
    ]
    for bad in (["--message-kb", "0"], ["--message-kb", "x"], ["--pin", "sometimes"]):
        with pytest.raises(SystemExit):
            bench_run.parse_args(bad)
    # The floor runs in every message scenario, first.
    for number in (1, 2, 3, 5, 6):
        assert bench_run.contenders_for(number, True)[0].name == "floor"


@pytest.mark.interop
@pytest.mark.skipif(
    not os.path.exists("/usr/sbin/smtp-sink"), reason="needs Postfix's smtp-sink (postfix)"
)
def test_run_one_tiny_round_pinned_and_unpinned(tmp_path):
    out = tmp_path / "out.json"
    command = [sys.executable, str(BENCH / "run.py"), "--scenarios", "1,2,3", "--rounds", "1"]
    command += ["--sizes", "1=2,2=3,3=2", "--pin", "both", "--message-kb", "1,2"]
    command += ["--timeout", "10", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    can_pin = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    keys = {f"{n}-{kb}k-{p}" for n in (1, 2, 3) for kb in (1, 2) for p in ("pinned", "unpinned")}
    assert set(report["scenarios"]) == keys
    for key, scenario in report["scenarios"].items():
        if key.endswith("-pinned") and not can_pin:
            assert scenario["skipped"].startswith("pinning unavailable")
            continue
        kb = scenario["condition"]["kb"]
        assert scenario["params"]["message_bytes"] == len(clients.message_of(kb))
        for name in ("floor", "smtplug"):
            assert scenario["clients"][name]["status"] == "ok", (key, name)
            assert len(scenario["clients"][name]["samples"]) == 1
            assert len(scenario["clients"][name]["extra"]["cpu_us_per_message"]) == 1
        params = scenario["params"]
        if key.endswith("-pinned"):
            assert params["pinned"] is True
            assert params["sink_cpus"] != params["client_cpus"]
            assert len(params["sink_cpus"].split(",")) == len(params["client_cpus"].split(","))
        else:
            assert params["pinned"] is False and params["sink_cpus"] == params["client_cpus"]
    assert done.stdout.count("| scenario | condition | floor | smtplug |") == 2  # msg/s, CPU
