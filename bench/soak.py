"""Soak benchmark (not CI): many mixed tasks through both worker pools; does anything grow?

    .venv/bin/python bench/soak.py                                   # 100,000 tasks, writes bench/soak.json
    .venv/bin/python bench/soak.py --tasks 3000 --out /tmp/soak.json  # a quick check (about a minute)

One prefork "cpu" worker and one eventlet "io" worker (compose/start/<role>) run in a throwaway RabbitMQ
vhost against a scratch database (PostgreSQL by default: created, migrated, dropped). The tasks
(bench/tasks.py) are mixed per 10: 2 bench.cpu.noop_result + 1 bench.cpu.noop (dataset queue, prefork)
and 5 bench.io.noop_result + 1 bench.io.noop + 1 bench.io.sleep(5 ms) (ops_trace queue, eventlet). They
are published in confirmed batches of 2,000 (apps.core.bulk.enqueue_many) while the workers consume,
and publishing pauses while either queue holds more than 20,000 ready messages.

Reports (printed, and written to --out together with the 2-second timeline): duration and throughput;
per worker the RSS of the main process after a warm-up of the first 2,000 tasks, at the end, its growth
(MiB and %) and peak; the highest RSS of any prefork child (children are replaced every
CELERY_WORKER_MAX_TASKS_PER_CHILD tasks, so their growth is capped by design and only their maximum is
meaningful); peak and final connections to the database (PostgreSQL only); FAILURE results; and the
number of ERROR lines in each worker's log.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.bench"
DEFAULT_DATABASE = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/platform_bench")

QUEUES = {"cpu": "dataset", "io": "ops_trace"}
BATCH = 2000  # also the warm-up size
BACKLOG_CAP = 20_000  # ready messages per queue before publishing pauses
SAMPLE_EVERY = 2.0  # seconds
APP_NAME = "bench-soak"  # this script's own database connections, left out of the counts
MIB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.json")
    parser.add_argument("--cpu-concurrency", type=int, default=2)
    parser.add_argument("--io-concurrency", type=int, default=100)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE,
                        help="PostgreSQL server for the scratch database (its database name is ignored); "
                             "a sqlite:// URL uses a scratch SQLite file under var/ (no connection counts)")
    return parser.parse_args()


def mix():
    """The repeating pattern of 10 tasks: (signature factory, stores a result)."""
    from bench import tasks as t

    return [(t.cpu_noop_result.s, True)] * 2 + [(t.cpu_noop.s, False)] + \
        [(t.io_noop_result.s, True)] * 5 + [(t.io_noop.s, False)] + [(lambda: t.io_sleep.s(0.005), False)]


def mib(n_bytes: int) -> float:
    return round(n_bytes / MIB, 1)


class Sampler(threading.Thread):
    """Every SAMPLE_EVERY seconds: RSS of each worker's main process and its children, DB connections."""

    def __init__(self, workers: dict, postgres: bool):
        super().__init__(daemon=True)
        self.workers, self.postgres = workers, postgres
        self.began = time.monotonic()
        self.samples: list[dict] = []
        self.children_seen: dict[str, set[int]] = {role: set() for role in workers}
        self.stopping = threading.Event()

    def run(self):
        from django.db import connection

        while not self.stopping.wait(SAMPLE_EVERY if self.samples else 0):
            self.samples.append(self.sample())
        connection.close()  # this thread's own connection

    def sample(self) -> dict:
        import psutil

        sample = {"t": round(time.monotonic() - self.began, 1), "rss": {}, "children": {}}
        for role, worker in self.workers.items():
            try:
                main = psutil.Process(worker.pid)
                sample["rss"][role] = main.memory_info().rss
                children = {c.pid: c.memory_info().rss for c in main.children()}
            except psutil.Error:  # a child exiting mid-read (recycled); the next sample has its successor
                children = {}
            self.children_seen[role].update(children)
            sample["children"][role] = list(children.values())
        sample["db"] = db_connections() if self.postgres else None
        return sample

    def stop(self):
        self.stopping.set()
        self.join(timeout=10)


def db_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name <> %s", [APP_NAME])
        return cursor.fetchone()[0]


def finished_results() -> int:
    from celery import states
    from django_celery_results.models import TaskResult

    return TaskResult.objects.filter(status__in=states.READY_STATES).count()


def queues_empty(vhost: str) -> bool:
    """Nothing ready and nothing unacknowledged (acks_late: a message is acked after its task ran)."""
    from tests.support import rabbit

    depth = {name: int(messages) for name, messages in rabbit.list_table(vhost, "queues", "name", "messages")}
    return all(depth.get(queue, 0) == 0 for queue in QUEUES.values())


def wait(predicate, workers: dict, timeout: float, message: str, interval: float = 0.5):
    """wait_for, failing at once (with the log tail) if a worker died."""
    from tests.support.workers import wait_for

    def check():
        for worker in workers.values():
            if not worker.alive():
                raise RuntimeError(f"{worker.role} worker exited:\n{worker.log()[-3000:]}")
        return predicate()

    return wait_for(check, timeout=timeout, interval=interval, message=message)


def publish(start: int, count: int, pattern) -> int:
    """Publish tasks start..start+count of the mix; return how many store a result."""
    from apps.core.bulk import enqueue_many

    chosen = [pattern[i % len(pattern)] for i in range(start, start + count)]
    enqueue_many(factory() for factory, _ in chosen)
    return sum(stores for _, stores in chosen)


def soak(args, vhost, workers: dict, sampler: Sampler) -> dict:
    from tests.support import rabbit

    pattern = mix()
    results_expected, sent = 0, 0
    began = time.monotonic()

    def done():
        return queues_empty(vhost.name) and finished_results() >= results_expected

    def below_cap():  # ready messages only: the backlog the workers have not taken yet
        return all(rabbit.queue_message_count(vhost.url, queue) <= BACKLOG_CAP for queue in QUEUES.values())

    while sent < args.tasks:
        wait(below_cap, workers, timeout=900, message="the backlog to shrink")
        count = min(BATCH, args.tasks - sent)
        results_expected += publish(sent, count, pattern)
        sent += count
        if sent == count:  # warm-up: imports, connections and caches are in place before the baseline
            wait(done, workers, timeout=300, message="the warm-up tasks")
            baseline = sampler.sample()
            sampler.samples.append(baseline)
    wait(done, workers, timeout=max(900, args.tasks / 20), message="every task to run", interval=1)
    duration = time.monotonic() - began
    end = sampler.sample()
    sampler.samples.append(end)
    return {"duration_s": round(duration, 1), "results_expected": results_expected,
            "baseline": baseline, "end": end}


def report(args, run: dict, sampler: Sampler, workers: dict, postgres: bool) -> dict:
    from django_celery_results.models import TaskResult

    samples, start, end = sampler.samples, run["baseline"], run["end"]
    per_worker = {}
    for role, worker in workers.items():
        before, after = start["rss"][role], end["rss"][role]
        per_worker[role] = {
            "pool": "prefork" if role == "cpu" else "eventlet",
            "concurrency": args.cpu_concurrency if role == "cpu" else args.io_concurrency,
            "rss_start_mib": mib(before), "rss_end_mib": mib(after), "rss_growth_mib": mib(after - before),
            "rss_growth_pct": round(100 * (after - before) / before, 1),
            "rss_peak_mib": mib(max(s["rss"].get(role, 0) for s in samples)),
            "log_error_lines": sum("ERROR" in line for line in worker.log().splitlines()),
            "log": str(worker.log_path),
        }
        if sampler.children_seen[role]:
            per_worker[role]["children_max_rss_mib"] = mib(max(max(s["children"][role], default=0) for s in samples))
            per_worker[role]["children_sampled"] = len(sampler.children_seen[role])
            per_worker[role]["children_note"] = (
                "children are replaced every CELERY_WORKER_MAX_TASKS_PER_CHILD tasks: their RSS is the max over "
                "time; children_sampled is a lower bound (one may live between two samples)")
    db_counts = [s["db"] for s in samples if s["db"] is not None]
    return {
        "tasks": args.tasks,
        "mix": "per 10: 2 cpu.noop_result, 1 cpu.noop, 5 io.noop_result, 1 io.noop, 1 io.sleep(5 ms)",
        "database": "postgresql" if postgres else "sqlite",
        "duration_s": run["duration_s"],
        "throughput_per_s": round(args.tasks / run["duration_s"], 1),
        "workers": per_worker,
        "db_connections": {"peak": max(db_counts), "final": end["db"]} if postgres else None,
        "results_stored": TaskResult.objects.count(),
        "results_expected": run["results_expected"],
        "task_failures": TaskResult.objects.filter(status="FAILURE").count(),
        "samples": len(samples),
    }


def timeline(samples: list[dict]) -> list[list]:
    """[seconds, cpu MiB, cpu children MiB (sum), io MiB, db connections] per sample."""
    return [[s["t"], mib(s["rss"].get("cpu", 0)), mib(sum(s["children"].get("cpu", []))), mib(s["rss"].get("io", 0)),
             s["db"]] for s in samples]


def main() -> None:
    args = parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    from bench.common import scratch_database

    db_url, drop_database = scratch_database("soak")
    os.environ["DATABASE_URL"] = db_url  # before django.setup(): settings read it once
    postgres = db_url.startswith("postgres")
    try:
        import django

        django.setup()
        from django.conf import settings

        from bench.run import Vhost, migrate, platform_worker

        # Tagged so the connection counts leave out this script's own connections (main and sampler).
        if postgres:
            settings.DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = APP_NAME
        migrate(db_url)
        with Vhost() as vhost:
            workers: dict = {}
            sampler = None
            try:
                workers["cpu"] = platform_worker(vhost.url, "cpu", args.cpu_concurrency, db_url)
                workers["io"] = platform_worker(vhost.url, "io", args.io_concurrency, db_url)
                for worker in workers.values():
                    worker.wait_ready(timeout=120)
                sampler = Sampler(workers, postgres)
                sampler.start()
                run = soak(args, vhost, workers, sampler)
                sampler.stop()
                result = report(args, run, sampler, workers, postgres)
            finally:
                if sampler:
                    sampler.stop()
                for worker in workers.values():
                    worker.stop()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**result, "timeline": timeline(sampler.samples)}, indent=1))
        print(json.dumps(result, indent=2))
    finally:
        from django.db import connections

        connections.close_all()
        drop_database()


if __name__ == "__main__":
    main()
