"""Regenerate docs/dashboard.png: the dashboard's overview in headless Chromium.

    python docs/dashboard_screenshot.py            # needs Debian's chromium and errands[dev]

It fills a throwaway SQLite database with a day of made-up history (results
ended over the last 24 hours, some failures, a paused queue, two workers),
serves the dashboard on localhost and photographs the overview.
"""

from __future__ import annotations

import datetime
import math
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

import errands
from errands.backends import Backend, open_backend
from errands.dashboard import create_app
from errands.models import NewRequest, Outcome, Requeue, Status, WorkerInfo

OUTPUT = Path(__file__).parent / "dashboard.png"
CHROMIUM = "/usr/bin/chromium"
QUEUES = ("default", "emails", "reports", "billing")
JOBS = (
    "shop.jobs.SendReceipt",
    "shop.jobs.ResizeImage",
    "shop.jobs.SyncStock",
    "shop.jobs.Invoice",
)


def enqueue(backend: Backend, count: int, queue: str, delay: float = 0.0) -> None:
    requests = [
        NewRequest(
            job_class=random.choice(JOBS),
            parameters={"args": [random.randint(1, 99999)], "kwargs": {}},
            queue=queue,
            delay_seconds=delay,
        )
        for _ in range(count)
    ]
    with backend.enqueue_transaction() as tx:
        tx.insert_requests(requests)


def history(backend: Backend, worker: uuid.UUID) -> None:
    """Results over the last day: a daily wave of traffic, a bad hour of errors."""
    now = backend.now()
    for minutes_ago in range(24 * 60, 0, -10):
        wave = 1 + math.sin(minutes_ago / 240)
        count = int(8 + 10 * wave)
        enqueue(backend, count, random.choice(QUEUES))
        processes = backend.claim(worker_id=worker, queues=[], limit=count)
        ended = now - datetime.timedelta(minutes=minutes_ago)
        bad_hour = 300 < minutes_ago < 360
        backend.complete_many(outcomes=[outcome(p.uuid, ended, bad_hour) for p in processes])


def outcome(process: uuid.UUID, ended: datetime.datetime, bad_hour: bool) -> Outcome:
    roll = random.random()
    if roll < (0.3 if bad_hour else 0.03):
        return Outcome(
            process_uuid=process,
            status=Status.ERRORED,
            started_at=ended - datetime.timedelta(seconds=1),
            ended_at=ended,
            error_type="TimeoutError",
            error="payment gateway did not answer",
        )
    if roll > 0.97:
        status = Status.DEFERRED if roll > 0.985 else Status.LOST
        requeue = Requeue(delay_seconds=60, retry_attempt=1) if status == Status.DEFERRED else None
        return Outcome(process, status, ended, ended, requeue=requeue)
    return Outcome(process, Status.SUCCESSFUL, ended - datetime.timedelta(seconds=2), ended)


def main() -> None:
    random.seed(7)
    url = f"sqlite:///{tempfile.mkdtemp()}/screenshot.db"
    backend = open_backend(url)
    backend.migrate()
    errands.configure(database_url=url)
    worker = uuid.uuid4()
    history(backend, worker)
    for queue, count in zip(QUEUES, (14, 37, 3, 9), strict=True):
        enqueue(backend, count, queue)
    enqueue(backend, 12, "reports", delay=3600)
    for host in ("web-1", "web-2"):
        info = WorkerInfo(
            worker_id=uuid.uuid4(), hostname=host, pid=random.randint(1000, 9999), queues=[]
        )
        backend.register_worker(worker=info)
        backend.claim(worker_id=info.worker_id, queues=["default", "emails"], limit=3)
    backend.pause_queue(queue="billing")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(insecure_no_auth=True), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        page.goto(f"http://127.0.0.1:{port}/?window=24h")
        page.wait_for_timeout(500)
        page.screenshot(path=str(OUTPUT), full_page=False)
        browser.close()
    server.should_exit = True
    print(f"wrote {OUTPUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
