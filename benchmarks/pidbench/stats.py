"""Sample containers and summaries."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass
class Series:
    """All samples of one metric for one init, plus failed attempts."""

    samples: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_applicable: str = ""  # reason, when the metric makes no sense for the init

    @property
    def ok(self) -> bool:
        return bool(self.samples) and not self.not_applicable


@dataclass(frozen=True)
class Summary:
    median: float
    minimum: float
    maximum: float
    count: int


def summarize(values: Sequence[float]) -> Summary:
    return Summary(statistics.median(values), min(values), max(values), len(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: always an observed value, never interpolated."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
