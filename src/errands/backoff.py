"""``Backoff``: how long a failed job waits before each retry, growing exponentially.

Used by ``Job.calculate_retry_delay`` (its default) when a job class sets
``retry_backoff``, or else the ``retry_backoff`` setting does. It lives in the
lowest import layer: the settings parse it, the jobs use it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry number ``attempt`` (1 for the first retry) waits
    ``min(maximum, base * factor ** (attempt - 1))`` seconds, spread by up to
    ``± jitter`` of itself (0.1: ±10 %) so that jobs failing together do not retry
    together, and never more than ``maximum``.

    ``Backoff()`` is 1 s, 2 s, 4 s ... up to an hour, ±10 %; ``Backoff(base=0)``
    retries at once.
    """

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _check("base", self.base, low=0.0)
        _check("factor", self.factor, low=1.0)
        _check("maximum", self.maximum, low=0.0)
        _check("jitter", self.jitter, low=0.0, high=1.0)

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The least and the most retry number ``attempt`` may wait."""
        delay = self._undisturbed(attempt)
        return delay * (1 - self.jitter), min(delay * (1 + self.jitter), self.maximum)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt``, jitter drawn at random."""
        low, high = self.bounds(attempt)
        return low if high <= low else random.uniform(low, high)

    def _undisturbed(self, attempt: int) -> float:
        if self.base == 0:
            return 0.0
        exponent = max(attempt, 1) - 1
        # factor ** exponent overflows a float past ~1e308: the cap is reached long before.
        try:
            grown = self.base * self.factor**exponent
        except OverflowError:
            return self.maximum
        return min(grown, self.maximum)


def _check(name: str, value: object, *, low: float, high: float = math.inf) -> None:
    """A finite number in [low, high], else ValueError naming the field."""
    valid = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
    if not valid:
        upper = "" if high == math.inf else f" and at most {high:g}"
        raise ValueError(
            f"Backoff({name}={value!r}): expected a finite number of at least {low:g}{upper}"
        )
