"""Coverage-guided fuzzing of the reply parser: atheris (libFuzzer) driving
the same :func:`fuzz_replies.check` as the built-in fuzzer.

The built-in engine (``fuzz_replies.py``) needs nothing and runs everywhere;
this one needs ``atheris`` (in the ``test`` extra where it has wheels:
CPython 3.11 and older on Linux) and follows the parser's branches::

    pip install -e '.[test]'
    python tests/fuzz/atheris_replies.py -max_total_time=60 [corpus_dir ...]

The inputs are those of :func:`fuzz_replies.check`: four octets choosing the
limits and the cuts, then the server's bytes. Without a corpus directory the
built-in seed corpus is written to a fresh temporary one. A property that
fails raises :class:`fuzz_replies.FuzzFailure`: libFuzzer prints the
traceback, saves the input as ``crash-<sha1>`` and exits non-zero; replay it
with ``python tests/fuzz/atheris_replies.py crash-<sha1>``.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["smtplug"]):
    import smtplug.protocol.replies  # noqa: F401 (instrumented for coverage)

from fuzz_replies import SEED_CORPUS, check


def test_one_input(data: bytes) -> None:
    check(data)


def _with_seed_corpus(argv: list[str]) -> list[str]:
    """``argv``, plus a directory holding the seed corpus when none is given."""
    if any(not arg.startswith("-") for arg in argv[1:]):
        return argv
    directory = tempfile.mkdtemp(prefix="smtplug-fuzz-corpus-")
    for index, seed in enumerate(SEED_CORPUS):
        with open(os.path.join(directory, f"seed-{index:02d}"), "wb") as handle:
            handle.write(b"\x0c\x07\x07\x01" + seed)  # roomy limits, random cuts
    return [*argv, directory]


def main() -> None:
    atheris.Setup(_with_seed_corpus(sys.argv), test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
