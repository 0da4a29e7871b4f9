"""What the first send costs before any byte: imports and memory.

    python benchmarks/importcost.py [--runs N]

Each run is a fresh interpreter that sends one plain-text message to an
in-process scripted server on 127.0.0.1 and reports its wall time and peak
RSS (``ru_maxrss``). ``lazy`` is smtplug as shipped: plugins register
stand-ins and import pyOpenSSL, cryptography, scramp and pure-sasl only when
chosen; ``eager`` loads every plugin's implementation first, as every send
did before; ``baseline`` sends nothing (smtplug itself is imported by then
in every mode: the scripted server is part of it), for scale. The time is
from the server being up to the message sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROGRAM = r"""
import json, resource, sys, time
start = time.perf_counter()
mode = sys.argv[1]
from smtplug.testing import ScriptedServer
with ScriptedServer() as server:
    began = time.perf_counter()
    if mode == "baseline":
        import smtplib
    else:
        import smtplug
        if mode == "eager":
            from smtplug.plugins import build_registry
            registry = build_registry()
            for thing in (*registry.tls_backends.values(), *registry.sasl_mechanisms.values()):
                load = getattr(thing, "implementation", None)
                if load is not None:
                    load()
        smtplug.sendmessage(
            b"From: a@example.com\r\nTo: b@example.org\r\n\r\nhi\r\n",
            servers="127.0.0.1", ports=server.port, usetls=False,
        )
    took = time.perf_counter() - began
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
heavy = [m for m in ("OpenSSL", "cryptography", "scramp", "puresasl") if m in sys.modules]
print(json.dumps({"seconds": took, "rss_kib": rss, "heavy": heavy}))
"""


def measure(mode: str, runs: int) -> dict[str, object]:
    samples = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
        )
        samples.append(json.loads(done.stdout))
    return {
        "ms": statistics.median(s["seconds"] for s in samples) * 1000,
        "rss_mib": statistics.median(s["rss_kib"] for s in samples) / 1024,
        "heavy": samples[0]["heavy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    results = {mode: measure(mode, args.runs) for mode in ("baseline", "lazy", "eager")}
    print(f"{'mode':10} {'first send ms':>14} {'peak RSS MiB':>13}  imported")
    for mode, r in results.items():
        print(f"{mode:10} {r['ms']:14.1f} {r['rss_mib']:13.1f}  {', '.join(r['heavy']) or '-'}")
    lazy, eager = results["lazy"], results["eager"]
    print(
        f"lazy saves {eager['ms'] - lazy['ms']:.0f} ms and "
        f"{eager['rss_mib'] - lazy['rss_mib']:.1f} MiB on the first plain send "
        f"(median of {args.runs} runs each)"
    )


if __name__ == "__main__":
    main()
