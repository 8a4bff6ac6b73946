"""A test app that serves HTTP and can use up the container's pids or fd limit.

``--port P`` serves ``200 ok`` to every request on 127.0.0.1:P (one thread).
``--fill pids`` forks idle children until fork fails (the pids limit),
``--fill fds`` is a no-op for the app itself (the fd limit is per process):
either way, after ``--hold`` seconds the children are released and reaped.
It prints ``ready``, then ``filled N`` and ``released``; it exits with
``--exit-code`` on SIGTERM (``--ignore-term``: never), or ``--exit-after``
seconds after the release.  ``--notify-flood`` sends datagrams to
``$NOTIFY_SOCKET`` without pause from a thread.  Every SIGUSR1 is reported as
a line ``signal SIGUSR1``.
"""

import argparse
import os
import signal
import socket
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--fill", choices=["pids", "none"], default="none")
parser.add_argument("--fill-after", type=float, default=0.0)
parser.add_argument("--hold", type=float, default=1.0)
parser.add_argument("--exit-after", type=float)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--notify-flood", action="store_true")
args = parser.parse_args()


def say(line: str) -> None:
    print(line, flush=True)


def serve(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        try:
            conn.settimeout(2)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        except OSError:
            pass
        finally:
            conn.close()


def flood() -> None:
    address = os.environ["NOTIFY_SOCKET"]
    target = "\0" + address[1:] if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    datagram = b"STATUS=flooding\nX=" + b"y" * 2000
    while True:
        try:
            sock.sendto(datagram, target)
        except BlockingIOError:
            time.sleep(0.0001)  # the receive queue is full: pidone is behind
        except OSError:
            time.sleep(0.01)


if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(args.exit_code))
signal.signal(signal.SIGUSR1, lambda *_: say("signal SIGUSR1"))
if args.notify_flood:
    threading.Thread(target=flood, daemon=True).start()
if args.port:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(64)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
say(f"ready {os.getpid()}")

if args.fill == "pids":
    time.sleep(args.fill_after)
    release_r, release_w = os.pipe()
    kids: list[int] = []

    def fill() -> bool:
        """Fork idle children until the limit says no; False once it does."""
        while True:
            try:
                pid = os.fork()
            except OSError:
                return False
            if pid == 0:
                os.close(release_w)
                os.read(release_r, 1)  # EOF once the parent releases us
                os._exit(0)
            kids.append(pid)

    fill()
    say(f"filled {len(kids)}")
    # Keep it full: whatever another process frees (a thread that ended) is
    # taken again at once.
    until = time.monotonic() + args.hold
    while time.monotonic() < until:
        fill()
        time.sleep(0.001)
    os.close(release_w)
    for pid in kids:
        os.waitpid(pid, 0)
    say("released")

if args.exit_after is not None:
    time.sleep(args.exit_after)
    sys.exit(args.exit_code)
while True:
    signal.pause()
