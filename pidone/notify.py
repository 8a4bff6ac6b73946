"""The sd_notify socket: apps that speak systemd's notify protocol work unchanged.

As systemd does (sd_notify(3)), pidone binds a unix datagram socket and
hands its address to the app in ``NOTIFY_SOCKET``; each datagram holds
newline-separated ``KEY=VALUE`` assignments, and unknown keys are ignored.
The address is in the abstract namespace (``@...``): nothing to create or
clean up on a file system that may be read-only, and reachable by an app
running as another user in the same container.  libsystemd, systemd-notify
and the common client libraries all accept ``@`` addresses.

A flood of messages cannot hurt pidone: a datagram is read into a fixed
buffer (longer ones are cut), at most :data:`BATCH` are taken per wake-up so
signals and child exits interleave, and what the kernel queues beyond the
socket's receive buffer is dropped by the kernel, not held by pidone.
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
from collections.abc import Callable

MAX_DATAGRAM = 4096
BATCH = 64

OnMessage = Callable[[dict[str, str]], None]


def parse(datagram: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines; lines without ``=`` are ignored, the last duplicate wins."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


class NotifySocket:
    def __init__(self) -> None:
        self.address = f"@pidone/notify/{os.getpid()}/{secrets.token_hex(8)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.setblocking(False)
        self._on_message: OnMessage = lambda _fields: None

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address}

    def register(self, selector: selectors.BaseSelector, on_message: OnMessage) -> None:
        self._on_message = on_message
        selector.register(self._sock, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self, _mask: int) -> None:
        for _ in range(BATCH):
            try:
                datagram = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            fields = parse(datagram)
            if fields:
                self._on_message(fields)
