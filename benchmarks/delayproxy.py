"""A TCP relay on 127.0.0.1 that delays everything by D ms each way.

Scenario 5's fallback where the kernel has no netem (``run.py --delay-proxy``):
a link of pure latency and unlimited bandwidth, emulated in user space, in a
process of its own so that it takes no CPU time (GIL) from the clients
measured. Each connection waits 3 D before it reaches the server (SYN,
SYN-ACK, ACK: the server's greeting then arrives 4 D after the connect began,
as over a real link), and every chunk of data, and the end of each
direction, is passed on D after it arrived, in order.

Usage: python delayproxy.py UPSTREAM_HOST UPSTREAM_PORT DELAY_MS MAX_SECONDS
Prints "ready PORT" once it listens; exits after MAX_SECONDS at the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while True:
            try:
                data = await reader.read(262144)
            except OSError:
                data = b""
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    receiving = asyncio.create_task(receive())
    try:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    except OSError:
        return
    finally:
        receiving.cancel()


async def _serve(host: str, port: int, delay: float, max_seconds: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter):
        server_writer = None
        try:
            await asyncio.sleep(3 * delay)  # the handshake's three crossings
            server_reader, server_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(
                _pump(client_reader, server_writer, delay),
                _pump(server_reader, client_writer, delay),
            )
        except OSError:
            pass
        finally:
            for writer in (client_writer, server_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1000)
    listen_port = server.sockets[0].getsockname()[1]
    print(f"ready {listen_port}", flush=True)
    async with server:
        await asyncio.sleep(max_seconds)


def main(argv: list[str]) -> int:
    host, port, delay_ms, max_seconds = argv
    asyncio.run(_serve(host, int(port), float(delay_ms) / 1000, float(max_seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
