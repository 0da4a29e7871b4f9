"""benchmarks/flight_threshold.py runs, and measures what it says (no timing):
waiting first never sends a refused message; the one flight sends it whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "flight_threshold.py"


def test_the_threshold_benchmark_runs_and_counts_what_the_server_was_sent(tmp_path):
    out = tmp_path / "flight.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--messages", "1", "--delay-ms", "0", "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = json.loads(out.read_text())
    assert {(r["server"], r["delay_ms"]) for r in rows} == {("accept", 0.0), ("refuse", 0.0)}
    for row in rows:
        if row["server"] == "accept":  # both ways deliver the message whole
            # (the headers prepare() adds, a Date and a Message-ID, vary by an octet)
            assert row["one_flight_octets"] >= row["size"]
            assert row["wait_first_octets"] >= row["size"]
        else:  # refused at RCPT: the one flight sent it for nothing, waiting did not
            assert row["one_flight_octets"] >= row["size"]
            assert row["wait_first_octets"] == 0
