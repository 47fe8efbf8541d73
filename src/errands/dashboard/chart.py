"""The overview's outcome cards and throughput chart, from the backend's bucket counts.

The chart is drawn on the server as SVG geometry (stacked bars, one per time
bucket), so the page needs no charting library and renders without JavaScript.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from errands.models import Status, Throughput

#: Bottom to top in each bar; also the order of the cards.
STATUS_ORDER = (Status.SUCCESSFUL, Status.DEFERRED, Status.CANCELLED, Status.LOST, Status.ERRORED)
RETRIED = "RETRIED"
#: Seconds per bar for each window: about 40 to 60 bars.
BUCKET_SECONDS = {"1h": 60, "24h": 30 * 60, "7d": 4 * 3600}
BAR_WIDTH = 10  # SVG units; the SVG scales to the page width
BAR_GAP = 2
HEIGHT = 100


@dataclass(frozen=True)
class Segment:
    status: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    start: datetime.datetime
    total: int
    x: int
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    peak: int
    bucket_seconds: int
    width: int
    height: int = HEIGHT
    bar_width: int = BAR_WIDTH - BAR_GAP


def outcome_counts(rows: Sequence[Throughput]) -> dict[str, int]:
    """Results per status over the whole window, plus ``RETRIED``: failures retried since."""
    counts = {str(status): 0 for status in STATUS_ORDER}
    counts[RETRIED] = 0
    for row in rows:
        counts[str(row.status)] += row.count
        counts[RETRIED] += row.retried
    return counts


def bucket_starts(
    since: datetime.datetime, now: datetime.datetime, bucket_seconds: int
) -> list[datetime.datetime]:
    """Every bucket from the one holding ``since`` to the one holding ``now``."""
    first = int(since.timestamp()) // bucket_seconds * bucket_seconds
    last = int(now.timestamp()) // bucket_seconds * bucket_seconds
    return [
        datetime.datetime.fromtimestamp(start, tz=datetime.UTC)
        for start in range(first, last + 1, bucket_seconds)
    ]


def build_chart(
    rows: Sequence[Throughput],
    *,
    since: datetime.datetime,
    now: datetime.datetime,
    bucket_seconds: int,
) -> Chart:
    per_bucket: dict[datetime.datetime, dict[Status, int]] = defaultdict(dict)
    for row in rows:
        per_bucket[row.bucket_start][row.status] = row.count
    starts = bucket_starts(since, now, bucket_seconds)
    peak = max((sum(per_bucket[start].values()) for start in starts), default=0)
    bars = [_bar(position, start, per_bucket[start], peak) for position, start in enumerate(starts)]
    return Chart(bars=bars, peak=peak, bucket_seconds=bucket_seconds, width=len(bars) * BAR_WIDTH)


def _bar(position: int, start: datetime.datetime, counts: dict[Status, int], peak: int) -> Bar:
    segments, top = [], float(HEIGHT)
    for status in STATUS_ORDER:
        count = counts.get(status, 0)
        if not count:
            continue
        height = HEIGHT * count / peak
        top -= height
        segments.append(
            Segment(status=str(status), count=count, y=round(top, 2), height=round(height, 2))
        )
    return Bar(start=start, total=sum(counts.values()), x=position * BAR_WIDTH, segments=segments)
