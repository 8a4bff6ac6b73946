"""structlog set-up, imported only once the app is running.

``import structlog`` costs tens of milliseconds, so the start-up path never
touches this module: the app is launched first, then the logger is built.

pidone's stderr may be closed or turned into a broken pipe by the world
around it; a PID 1 that dies of that takes the app's exit code with it.  So
the sink below swallows write errors, stops writing after the first broken
pipe, and tells the loop that the SIGPIPE it is about to see was its own.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, MutableMapping
from typing import Any

from pidone.config import LogFormat

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class SafeStderr:
    """A structlog logger that writes whole lines to fd 2 and never raises."""

    def __init__(self, on_broken_pipe: Callable[[], None]) -> None:
        self._on_broken_pipe = on_broken_pipe
        self.closed = False

    def msg(self, message: str) -> None:
        if self.closed:
            return
        data = (message + "\n").encode("utf-8", "backslashreplace")
        try:
            while data:
                written = os.write(2, data)
                data = data[written:]
        except BrokenPipeError:
            self.closed = True
            self._on_broken_pipe()
        except BlockingIOError:
            pass  # a full non-blocking pipe: this line is lost, the next may fit
        except OSError:
            self.closed = True

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _event_first(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """Put the stable keys first, so a line reads well and greps well."""
    head: dict[str, Any] = {k: event.pop(k) for k in ("timestamp", "level", "event") if k in event}
    return {**head, **event}


def use_console(fmt: LogFormat) -> bool:
    if fmt == "auto":
        try:
            return os.isatty(2)
        except OSError:
            return False
    return fmt == "console"


class _DeferredModule(types.ModuleType):
    """A stand-in that imports the real module on first attribute access.

    ``structlog.stdlib`` imports asyncio at its top but only uses it inside
    its async logging methods, which pidone never calls.  asyncio (with ssl
    and concurrent.futures behind it) is about half of structlog's import
    time and 11 MB of pidone's resident memory.  Should anything ever touch
    it, the real module is loaded then and takes this one's place.
    """

    def __getattr__(self, attr: str) -> Any:
        real = sys.modules.get(self.__name__)
        if real is self or real is None:  # first use: replace the stand-in for good
            sys.modules.pop(self.__name__, None)
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def _import_structlog() -> Any:
    if "asyncio" not in sys.modules:
        sys.modules["asyncio"] = _DeferredModule("asyncio")
    import structlog

    return structlog


def setup(fmt: LogFormat, level: str, on_broken_pipe: Callable[[], None]) -> Any:
    structlog = _import_structlog()
    console = use_console(fmt)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)
        if console
        else structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
    )
    sink = SafeStderr(on_broken_pipe)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _event_first,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()
