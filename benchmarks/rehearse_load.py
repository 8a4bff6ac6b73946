"""Throughput of ``pidone rehearse``'s load generator against a trivial local HTTP server.

The server is a single-threaded epoll loop in its own process that answers every request with
a canned keep-alive ``200`` (HTTP/1.1, Content-Length), so what is measured is the client: the
requests per second it sends *and classifies* through N keep-alive connections.

    python benchmarks/rehearse_load.py [--seconds 5] [--concurrency 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pidone.rehearse.loadgen import CLASSES, LoadGenerator, parse_target

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


def serve() -> None:
    """The trivial server: every complete request head gets the canned response."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, conn)
                pending[conn] = b""
                continue
            conn = key.data
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                conn.close()
                pending.pop(conn, None)
                continue
            buf = pending[conn] + data
            count = buf.count(b"\r\n\r\n")
            pending[conn] = buf[buf.rfind(b"\r\n\r\n") + 4 :] if count else buf
            if count:
                conn.sendall(RESPONSE * count)


def measure(port: int, seconds: float, concurrency: int) -> tuple[float, dict[str, int]]:
    gen = LoadGenerator([parse_target(f"GET http://127.0.0.1:{port}/")], concurrency)
    gen.start()
    started = time.monotonic()
    end = started + seconds
    while (now := time.monotonic()) < end:
        gen.poll(end - now)
    gen.stop()
    while gen.inflight():
        gen.poll(1.0)
    elapsed = time.monotonic() - started
    records = gen.records
    counts = {name: records.kind.count(i) for i, name in enumerate(CLASSES)}
    assert len(records) == sum(counts.values())
    return len(records) / elapsed, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-only"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rates = []
        for _ in range(args.repeat):
            rate, counts = measure(port, args.seconds, args.concurrency)
            rates.append(rate)
            print(f"{rate:8.0f} req/s  {counts}", flush=True)
        print(
            f"median {statistics.median(rates):.0f} req/s (min {min(rates):.0f}, "
            f"max {max(rates):.0f}) over {args.repeat} x {args.seconds:g}s, "
            f"{args.concurrency} connections, {os.cpu_count()} CPUs"
        )
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-only"]:
        serve()
    sys.exit(main())
