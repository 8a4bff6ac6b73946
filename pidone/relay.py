"""``--prefix-output``: every line of every supervised process, prefixed with its name.

Without it the app and the sidecars write straight to the container's
stdout and stderr (inherited descriptors), and pidone never touches a byte.
With it each of them gets two pipes of pidone's instead; pidone reads them in
its one selector, cuts the bytes into lines, puts ``name | `` in front and
writes the lines to its own stdout or stderr.

That makes pidone a writer to streams whose readers it does not own, so the
relay is built never to wait for them:

- To a pipe (what a container runtime gives) it writes through an open file
  description of its own (``/proc/self/fd/N`` opened again with
  ``O_NONBLOCK``): fds 1 and 2 stay blocking for whoever else shares them
  (drains, hooks), while pidone's writes return ``EAGAIN`` instead of
  blocking when the reader stalls.  To a socket it sends with
  ``MSG_DONTWAIT``, which leaves the socket's own flags alone.  A regular
  file or a terminal is written as it is: a second open file description
  of a file would have an offset of its own and overwrite what others write
  (where such a write can block, on a hung network file system or a
  terminal stopped with ^S, pidone would wait with it).
- What waits to be written is bounded (:data:`QUEUE_BYTES` per stream); a
  line that does not fit is dropped, whole, and counted, and the count is
  logged (``output_lines_dropped``) once the stream has taken every line it
  was given again.  A line longer than
  :data:`LINE_MAX` is cut there.
- A line is written whole before the next one starts, so lines of different
  processes never interleave, even when the kernel takes a line in parts.

A process's pipes are read until their end; a process that has exited but
left children holding its pipe keeps it open, as with any log pipe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import selectors
import socket
import stat
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# The most pidone holds for one stream while its reader stalls.
QUEUE_BYTES = 1024 * 1024
# The longest line relayed as one; longer ones are cut into lines of this size.
LINE_MAX = 16 * 1024
_READ = 64 * 1024
# At the end: the most the queued lines may delay pidone's exit, and how long a
# reader that takes nothing is waited for.
CLOSE_WAIT = 0.5
STALLED = 0.025


class _Stream:
    """One of pidone's own output streams (1 or 2), written without blocking."""

    def __init__(
        self, fd: int, selector: selectors.BaseSelector, on_dropped: Callable[[int], None]
    ) -> None:
        self._selector = selector
        self._on_dropped = on_dropped
        self.fd: int | None = None
        self._sock: socket.socket | None = None
        with contextlib.suppress(OSError):  # no such stream, or no /proc: lines are dropped
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode):
                flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC
                self.fd = os.open(f"/proc/self/fd/{fd}", flags)
            elif stat.S_ISSOCK(mode):
                self._sock = socket.socket(fileno=os.dup(fd))
                self.fd = self._sock.fileno()
            else:
                self.fd = fd
        self._lines: deque[bytes] = deque()
        self._bytes = 0
        self._head = b""  # what is left of the line being written
        self.dropped = 0
        self.reported = 0
        self._watched = False

    @property
    def pending(self) -> bool:
        return bool(self._head or self._lines)

    def put(self, line: bytes) -> None:
        if self.fd is None or self._bytes + len(line) > QUEUE_BYTES:
            self.dropped += 1
            return
        self._lines.append(line)
        self._bytes += len(line)
        self.flush()

    def flush(self, _mask: int = 0) -> None:
        while self.fd is not None and (self._head or self._lines):
            if not self._head:
                self._head = self._lines.popleft()
                self._bytes -= len(self._head)
            try:
                written = self._write(self._head)
            except BlockingIOError:
                self._watch(want=True)
                return
            except OSError as exc:  # EPIPE, EIO, ENOSPC: this line is lost, not the stream
                self.dropped += 1
                self._head = b""
                if exc.errno == errno.EPIPE:
                    self._drop_all()
                continue
            self._head = self._head[written:]
        self._watch(want=False)
        if self.dropped > self.reported and self.fd is not None:  # it takes lines again
            self._on_dropped(self.dropped - self.reported)
            self.reported = self.dropped

    def _write(self, data: bytes) -> int:
        if self._sock is not None:
            return self._sock.send(data, socket.MSG_DONTWAIT)
        assert self.fd is not None
        return os.write(self.fd, data)

    def _drop_all(self) -> None:
        """The reader is gone for good: nothing will be written any more."""
        self.dropped += len(self._lines)
        self._lines.clear()
        self._bytes = 0
        self._watch(want=False)
        if self._sock is not None:
            self._sock.close()
        elif self.fd is not None and self.fd > 2:  # pidone's own description of a pipe
            os.close(self.fd)
        self.fd = None

    def _watch(self, *, want: bool) -> None:
        if want == self._watched or self.fd is None:
            return
        if want:
            self._selector.register(self.fd, selectors.EVENT_WRITE, self.flush)
        else:
            self._selector.unregister(self.fd)
        self._watched = want


class Relay:
    """The pipes of the processes whose output is prefixed, and pidone's two streams."""

    def __init__(self, selector: selectors.BaseSelector, on_dropped: Callable[[int], None]) -> None:
        self._selector = selector
        self._streams = {1: _Stream(1, selector, on_dropped), 2: _Stream(2, selector, on_dropped)}
        self._sources: set[_Source] = set()

    def _ended(self, source: _Source) -> None:
        self._sources.discard(source)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(source.fd)
        with contextlib.suppress(OSError):
            os.close(source.fd)

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """At the end: take what the pipes hold now, and give it ``timeout`` to be written.

        Nothing waits for a process still holding a pipe: only what is already
        in it is read.  The streams get at most ``timeout``, less when the
        reader has taken nothing for :data:`STALLED`.
        """
        for source in list(self._sources):
            source.take_all()
        end = time.monotonic() + timeout
        while True:
            waiting = [st.fd for st in self._streams.values() if st.pending and st.fd is not None]
            left = end - time.monotonic()
            if not waiting or left <= 0:
                return
            _, ready, _ = select.select([], waiting, [], min(left, STALLED))
            if not ready:
                return  # the reader took nothing for a while: do not wait for it
            for stream in self._streams.values():
                if stream.fd in ready:
                    stream.flush()

    @property
    def dropped(self) -> int:
        return sum(stream.dropped for stream in self._streams.values())

    def pipes(self, name: str) -> tuple[int, int]:
        """The write ends for a new process's stdout and stderr.

        The caller hands them to the child and closes them; pidone reads the
        other ends until the child (and whatever inherited them) has closed them.
        Out of descriptors, nothing is left half made and the error is raised:
        that process then writes unprefixed.
        """
        ends: list[int] = []
        sources: list[_Source] = []
        try:
            for target in (1, 2):
                read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                ends += [read_end, write_end]
                os.set_blocking(write_end, True)  # the child's end behaves as a plain pipe
                source = _Source(name.encode(), self._streams[target], read_end, self._ended)
                self._selector.register(read_end, selectors.EVENT_READ, source.on_readable)
                sources.append(source)
        except (OSError, ValueError):
            for fd in ends:
                with contextlib.suppress(OSError, KeyError, ValueError):
                    self._selector.unregister(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        self._sources.update(sources)  # both or neither: a half-made pair is undone above
        return ends[1], ends[3]


class _Source:
    """One pipe of one process: bytes in, prefixed whole lines out."""

    def __init__(
        self, name: bytes, stream: _Stream, fd: int, on_end: Callable[[_Source], None]
    ) -> None:
        self._prefix = name + b" | "
        self._stream = stream
        self.fd = fd
        self._on_end = on_end
        self._partial = b""
        self._cut = False  # the last line relayed was cut, exactly where the partial ended

    def take_all(self) -> None:
        """Read what the pipe holds now (bounded: it is not waited on)."""
        for _ in range(64):
            if not self.on_readable(0):
                break
        if self._partial:  # a last line without its newline, from a pipe still held open
            self._emit(self._partial)
            self._partial = b""

    def on_readable(self, _mask: int) -> bool:
        """Relay one read; whether there may be more."""
        try:
            data = os.read(self.fd, _READ)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # every writer has closed it
            if self._partial:
                self._emit(self._partial)
                self._partial = b""
            self._on_end(self)
            return False
        *lines, partial = (self._partial + data).split(b"\n")
        if self._cut and lines and not lines[0]:
            del lines[0]  # the end of a line already relayed, cut at LINE_MAX
        for line in lines:
            self._emit(line)
        # An endless line is relayed in pieces as it comes, not held whole.
        whole = len(partial) - len(partial) % LINE_MAX
        if whole:
            self._emit(partial[:whole])
        self._partial = partial[whole:]
        self._cut = whole > 0 and not self._partial
        return True

    def _emit(self, content: bytes) -> None:
        """One line (without its newline), cut into lines of :data:`LINE_MAX` at most."""
        for start in range(0, max(len(content), 1), LINE_MAX):  # an empty line is a line
            self._stream.put(self._prefix + content[start : start + LINE_MAX] + b"\n")
