"""The atheris target runs: libFuzzer drives ``check`` over the seed corpus
and beyond, and a failing property is reported as a crash (exit code 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has wheels for CPython <= 3.11 on Linux only")

TARGET = Path(__file__).with_name("atheris_replies.py")


def test_the_target_runs_clean() -> None:
    done = subprocess.run(
        [sys.executable, str(TARGET), "-runs=3000", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done 3000 runs" in done.stderr


def test_a_failing_property_is_a_crash(tmp_path: Path) -> None:
    # A copy of the target whose check finds fault with every input.
    broken = tmp_path / "broken_target.py"
    broken.write_text(
        TARGET.read_text().replace(
            "    check(data)\n", "    raise AssertionError('deliberately broken')\n"
        )
    )
    done = subprocess.run(
        [sys.executable, str(broken), "-runs=10", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=TARGET.parent,
        env={"PYTHONPATH": str(TARGET.parent)},
    )
    assert done.returncode != 0
    assert "deliberately broken" in done.stdout + done.stderr
    assert list(tmp_path.glob("crash-*"))
