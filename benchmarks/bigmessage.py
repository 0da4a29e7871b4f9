"""Scenario 4's child: send one big message with one client, in a fresh process.

Run by run.py as ``python bigmessage.py CLIENT MODE HOST PORT PATH TIMEOUT``;
prints one JSON object. CLIENT is smtplug-bytes, smtplug-file, smtplib or
aiosmtplib; MODE is ``timed`` (wall time and max-RSS growth, nothing else
running) or ``traced`` (tracemalloc's peak, which slows Python code down, so
it is measured in a run of its own).

The baseline is taken after the imports, one small warm-up message sent the
same way (lazy imports, first-use caches), the plugin registry and, for the
``bytes`` clients, the caller's own copy of the message (read from PATH in
one allocation): only what sending adds on top is measured. Before taking
it, the kernel's RSS high-water mark is reset (/proc/self/clear_refs "5")
where allowed, so the growth is measured from the current RSS.

getrusage's ru_maxrss also keeps the high-water mark of whatever process
exec'd this one (the kernel carries it over exec): run.py therefore starts
this script through a short-lived /bin/sh that forks it, never from the
harness's own (bigger) address space. ``hwm_growth`` (VmHWM after minus
VmRSS before) is the same quantity read from /proc, as a cross-check.
"""

from __future__ import annotations

import asyncio
import json
import resource
import smtplib
import sys
import time
import tracemalloc

import smtplug

FROM = "big-sender@example.com"
TO = "big-rcpt@example.org"


def _status_kib(field: str) -> int:
    """VmRSS or VmHWM (the mm's own high-water mark) from /proc/self/status, in KiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    client, mode, host, port_text, path, timeout_text = argv
    port, timeout = int(port_text), float(timeout_text)
    import aiosmtplib

    build_registry = getattr(getattr(smtplug, "plugins", None), "build_registry", None)
    if build_registry is not None:
        build_registry()  # what the first call would load anyway; not the message's cost
    # One small message first, the same way: lazy imports and first-use caches
    # are not what a big message costs.
    small = b"From: big-sender@example.com\r\nSubject: warm-up\r\n\r\nwarm-up\r\n"
    if client.startswith("smtplug"):
        warm = smtplug.sendmessage(
            small, servers=[host], ports=[port], client="localhost", usetls=False,
            originator=FROM, recipients=[TO], timeout=timeout,
        )  # fmt: skip
        assert warm.accepted, warm
    elif client == "smtplib":
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=timeout) as smtp:
            assert not smtp.sendmail(FROM, [TO], small)
    elif client == "aiosmtplib":

        async def warm_up() -> None:
            smtp = aiosmtplib.SMTP(
                hostname=host, port=port, local_hostname="localhost", use_tls=False,
                start_tls=False, timeout=timeout,
            )  # fmt: skip
            async with smtp:
                errors, _ = await smtp.sendmail(FROM, [TO], small)
                assert not errors, errors

        asyncio.run(warm_up())
    message: bytes | None = None
    if client != "smtplug-file":
        with open(path, "rb") as handle:
            message = handle.read()  # the caller's own copy: part of the baseline
    reset = _reset_high_water()
    base_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    current_rss_kib = _status_kib("VmRSS")
    if mode == "traced":
        tracemalloc.start()
        tracemalloc.reset_peak()
    traced_base = tracemalloc.get_traced_memory()[0] if mode == "traced" else 0
    started = time.perf_counter()
    if client == "smtplug-bytes":
        result = smtplug.sendmessage(
            message, servers=[host], ports=[port], client="localhost", usetls=False,
            originator=FROM, recipients=[TO], timeout=timeout,
        )  # fmt: skip
        ok = result.accepted is True and len(result) == 0
        detail = repr(result)
    elif client == "smtplug-file":
        with open(path, "rb") as handle:
            result = smtplug.sendmessage(
                handle, servers=[host], ports=[port], client="localhost", usetls=False,
                originator=FROM, recipients=[TO], timeout=timeout,
            )  # fmt: skip
        ok = result.accepted is True and len(result) == 0
        detail = repr(result)
    elif client == "smtplib":
        assert message is not None
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=timeout) as smtp:
            refused = smtp.sendmail(FROM, [TO], message)
        ok, detail = not refused, repr(refused)
    elif client == "aiosmtplib":
        assert message is not None
        big = message

        async def send() -> tuple[dict[str, object], str]:
            smtp = aiosmtplib.SMTP(
                hostname=host, port=port, local_hostname="localhost", use_tls=False,
                start_tls=False, timeout=timeout,
            )  # fmt: skip
            async with smtp:
                return await smtp.sendmail(FROM, [TO], big)

        errors, response = asyncio.run(send())
        ok, detail = not errors, f"{errors!r} {response}"
    else:
        raise SystemExit(f"unknown client {client!r}")
    elapsed = time.perf_counter() - started
    peak = 0
    if mode == "traced":
        peak = max(0, tracemalloc.get_traced_memory()[1] - traced_base)
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss_kib
    hwm_growth = _status_kib("VmHWM") - current_rss_kib
    print(
        json.dumps(
            {
                "ok": ok,
                "detail": detail[:300],
                "seconds": elapsed,
                "traced_peak": peak,
                "rss_growth": max(0, rss_growth) * 1024,
                "hwm_growth": max(0, hwm_growth) * 1024 if reset else None,
                "baseline_rss": current_rss_kib * 1024,
                "high_water_reset": reset,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
