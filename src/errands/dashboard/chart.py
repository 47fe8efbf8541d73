"""The overview's outcome cards and throughput chart, from the backend's bucket counts.

The chart is drawn on the server as SVG geometry (stacked bars, one per time
bucket), so the page needs no charting library and renders without JavaScript.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from errands.backends.base import Backend
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


# -- keeping a window's counts cheap to refresh --------------------------------------------


def aligned(moment: datetime.datetime, bucket_seconds: int) -> datetime.datetime:
    """The start of the bucket holding ``moment``."""
    start = int(moment.timestamp()) // bucket_seconds * bucket_seconds
    return datetime.datetime.fromtimestamp(start, tz=datetime.UTC)


@dataclass(frozen=True)
class _Settled:
    rows: list[Throughput]
    start: datetime.datetime  # the rows cover buckets from this one ...
    boundary: datetime.datetime  # ... to the one before this one
    fetched_at: float  # time.monotonic()


class ThroughputCache:
    """A window's bucket counts, with the settled buckets recounted only once in a while.

    Counting a week of a busy history reads every result of the week, too slow to
    repeat at every live refresh. A bucket is *settled* once it ended
    ``settle_seconds`` ago (results are written shortly after they end: workers
    flush outcomes in batches, rescues write LOST results when they notice), and
    settled buckets hardly change. They are kept for ``ttl_seconds``, then
    recounted in a background thread while the previous counts are still served;
    the buckets after them are counted at every request. So only the first view
    of a window reads it whole, and a late change to an old bucket (a deletion, a
    retry of an old failure) shows within about ``ttl_seconds``.

    That first count runs in the background too: a page waits ``wait_seconds``
    for it and, if it is not done, renders without counts (None), which the
    page's next refresh fills in. A page never waits for a long count.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = 60.0,
        settle_seconds: float = 120.0,
        wait_seconds: float = 0.25,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.settle = datetime.timedelta(seconds=settle_seconds)
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._settled: dict[tuple[str, int], _Settled] = {}
        self._refreshing: set[tuple[str, int]] = set()
        self._first_counts: dict[tuple[str, int], Future[list[Throughput]]] = {}
        # One thread, reused: a backend may keep one connection per thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="errands-counts")

    def rows(
        self,
        backend: Backend,
        *,
        since: datetime.datetime,
        now: datetime.datetime,
        bucket_seconds: int,
    ) -> list[Throughput] | None:
        """Counts of every bucket from the one holding ``since`` to the one holding ``now``;
        None while the window's first count is still running."""
        first = aligned(since, bucket_seconds)
        key = (backend.url, bucket_seconds)
        settled = self._usable(key, first)
        if settled is None:  # first view of this window: count it whole, keep the settled part
            counting = self._first_count(backend, key, first, now, bucket_seconds)
            try:
                every = counting.result(timeout=self.wait_seconds)
            except FutureTimeout:
                return None
            return [row for row in every if row.bucket_start >= first]
        if self._expired(key, settled):
            self._executor.submit(self._recount, backend, key, first, now, bucket_seconds)
        recent = backend.throughput(since=settled.boundary, bucket_seconds=bucket_seconds)
        return [row for row in settled.rows + recent if row.bucket_start >= first]

    def _first_count(
        self,
        backend: Backend,
        key: tuple[str, int],
        first: datetime.datetime,
        now: datetime.datetime,
        bucket: int,
    ) -> Future[list[Throughput]]:
        """The running first count of this window (started now if none is running)."""
        with self._lock:
            running = self._first_counts.get(key)
            if running is None or (running.done() and running.exception() is not None):
                running = self._executor.submit(self._count_whole, backend, key, first, now, bucket)
                self._first_counts[key] = running
            return running

    def _count_whole(
        self,
        backend: Backend,
        key: tuple[str, int],
        first: datetime.datetime,
        now: datetime.datetime,
        bucket: int,
    ) -> list[Throughput]:
        every = backend.throughput(since=first, bucket_seconds=bucket)
        self._keep(key, every, first, now, bucket)
        return every

    def _usable(self, key: tuple[str, int], first: datetime.datetime) -> _Settled | None:
        with self._lock:
            settled = self._settled.get(key)
        return settled if settled is not None and settled.start <= first else None

    def _expired(self, key: tuple[str, int], settled: _Settled) -> bool:
        """True once the settled counts are older than the ttl and nobody recounts them yet."""
        with self._lock:
            if time.monotonic() - settled.fetched_at <= self.ttl_seconds or key in self._refreshing:
                return False
            self._refreshing.add(key)
            return True

    def _recount(
        self,
        backend: Backend,
        key: tuple[str, int],
        first: datetime.datetime,
        now: datetime.datetime,
        bucket: int,
    ) -> None:
        try:
            self._count_whole(backend, key, first, now, bucket)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _keep(
        self,
        key: tuple[str, int],
        rows: list[Throughput],
        first: datetime.datetime,
        now: datetime.datetime,
        bucket: int,
    ) -> None:
        boundary = max(first, aligned(now - self.settle, bucket))
        settled = _Settled(
            rows=[row for row in rows if row.bucket_start < boundary],
            start=first,
            boundary=boundary,
            fetched_at=time.monotonic(),
        )
        with self._lock:
            self._settled[key] = settled
