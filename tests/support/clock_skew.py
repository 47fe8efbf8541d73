"""Shifts this process's wall clock when ``TEST_CLOCK_SKEW_SECONDS`` is set.

Imported first by the fault tests' worker (and by ``sample_jobs``, so the
worker's job processes share the skew): ``time.time`` and ``datetime.now`` run
ahead or behind, as on a host whose clock is wrong. errands must judge due times
and heartbeats by the database clock, so a skewed worker behaves exactly like
a correct one.
"""

import datetime
import os
import time


def skew_clock(seconds: float) -> None:
    real_time = time.time
    real_datetime = datetime.datetime

    class SkewedDateTime(real_datetime):
        __slots__ = ()  # same layout as datetime, which C extensions check

        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> "SkewedDateTime":
            moment = real_datetime.now(tz) + datetime.timedelta(seconds=seconds)
            return cls.combine(moment.date(), moment.timetz())

    time.time = lambda: real_time() + seconds
    datetime.datetime = SkewedDateTime  # type: ignore[misc]


_skew = float(os.environ.get("TEST_CLOCK_SKEW_SECONDS", "0"))
if _skew and not getattr(time, "_errands_skewed", False):
    skew_clock(_skew)
    time._errands_skewed = True  # type: ignore[attr-defined]
