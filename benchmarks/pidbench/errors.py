"""The one exception type the benchmark raises for a failed sample."""

from __future__ import annotations


class BenchError(Exception):
    """A sample could not be measured (timeout, init crashed, bad output...).

    The runner records the message against the init and carries on, so one
    misbehaving init cannot sink the whole run.
    """
