"""What the task ledger costs, as ratios against baselines taken in the same run.

1. Publish path: Celery apply_async (confirmed) vs a raw kombu confirmed publish. The control plane adds
   no publish hook (QUEUED comes from the task-sent event Celery already sends), so this ratio is the
   platform's, not the ledger's; it is printed so a regression would show.
2. Recorder: Celery-shaped events (sent, started, succeeded per task) applied to the ledger in the
   recorder's batches, events/s, vs the same rows written with one plain bulk_create (the floor).

Usage (a throwaway vhost and database; nothing shared is touched):
    DJANGO_SETTINGS_MODULE=project.settings.test DATABASE_URL=sqlite:////tmp/control-bench.sqlite3 \
        .venv/bin/python bench/control_ledger.py --tasks 2000
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from kombu import Connection, Exchange, Queue  # noqa: E402

from tests.support import rabbit  # noqa: E402


def publish_rates(url: str, n: int) -> tuple[float, float]:
    from project.celery import app
    from tests.support.tasks import io_echo

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None
    queue = Queue("bench.raw", Exchange("bench.raw", type="direct"), routing_key="bench.raw")
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        queue.bind(conn.default_channel).declare()
        start = time.perf_counter()
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="bench.raw", delivery_mode=2)
        raw = n / (time.perf_counter() - start)
    with Connection(url) as conn:  # declare the work queues once
        for q in app.amqp.queues.values():
            q.bind(conn.default_channel).declare()
    io_echo.delay(0)
    start = time.perf_counter()
    for i in range(n):
        io_echo.delay(i)
    celery = n / (time.perf_counter() - start)
    return raw, celery


def recorder_rates(n: int) -> tuple[float, float]:
    from apps.control.models import TaskRecord
    from apps.control.recorder import record_events

    now = time.time()
    events = []
    for i in range(n):
        task_id = str(uuid.uuid4())
        events += [
            {"type": "task-sent", "uuid": task_id, "name": "tests.io.echo", "args": f"({i},)", "kwargs": "{}",
             "queue": "ops_trace", "retries": 0, "timestamp": now},
            {"type": "task-started", "uuid": task_id, "hostname": "io@bench", "timestamp": now + 0.001},
            {"type": "task-succeeded", "uuid": task_id, "result": "1", "runtime": 0.001, "timestamp": now + 0.002},
        ]
    start = time.perf_counter()
    for i in range(0, len(events), 500):  # the recorder's default batch size
        record_events(events[i:i + 500])
    ledger = len(events) / (time.perf_counter() - start)
    assert TaskRecord.objects.filter(state="SUCCESS").count() == n

    TaskRecord.objects.all().delete()
    rows = [TaskRecord(task_id=str(uuid.uuid4()), name="x", state="SUCCESS") for _ in range(n)]
    start = time.perf_counter()
    for i in range(0, n, 500):
        TaskRecord.objects.bulk_create(rows[i:i + 500])
    floor = 3 * n / (time.perf_counter() - start)  # expressed per event: three events per row
    TaskRecord.objects.all().delete()
    return ledger, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=2000)
    args = parser.parse_args()
    from django.db import connection

    from apps.control.models import TaskRecord

    call_command("migrate", verbosity=0)
    TaskRecord.objects.all().delete()
    vhost = rabbit.create_vhost("control-bench")
    try:
        raw, celery = publish_rates(rabbit.vhost_url(vhost), args.tasks)
    finally:
        rabbit.delete_vhost(vhost)
    ledger, floor = recorder_rates(args.tasks)
    print(f"database: {connection.vendor}; tasks: {args.tasks}; load average (1 min): {os.getloadavg()[0]:.2f}")
    print(f"raw confirmed publish     {raw:9.0f} msg/s")
    print(f"apply_async (confirmed)   {celery:9.0f} tasks/s   ratio {celery / raw:.2f}  (no ledger hook on this path)")
    print(f"ledger recorder           {ledger:9.0f} events/s  ratio {ledger / floor:.2f} of a plain bulk insert "
          f"({floor:.0f} events/s)")


if __name__ == "__main__":
    main()
