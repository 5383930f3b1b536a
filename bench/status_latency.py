"""How fast the status answers are: health, stats and workers from the recorder's view vs a live broadcast.

Starts a recorder, a cpu and an io worker (real processes from compose/start/<role>) on a throwaway vhost,
waits until both workers have announced themselves, then times, in this process:
* `health_report()` (fast: worker registry + passive declares) and `health_report(live=True)`;
* GET /api/v1/health/, /stats/, /workers/ through Django's test client, with and without ``?live=1``.
Prints the median and the maximum of each, in milliseconds. Target (issue 16): the fast path < 300 ms.

Usage (a throwaway vhost and database; nothing shared is touched):
    DJANGO_SETTINGS_MODULE=project.settings.test DATABASE_URL=sqlite:////tmp/status-bench.sqlite3 \\
        .venv/bin/python bench/status_latency.py --repeat 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from tests.support import rabbit  # noqa: E402


def timed(call, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    from apps.core import workers as registry
    from apps.core.health import health_report
    from tests.support.workers import ProcessRole, Worker, database_url, wait_for

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0)
    db_url = database_url(django.db.connection.settings_dict)
    with rabbit.own_vhost("platform-bench-status") as url:
        processes = [ProcessRole("recorder", url, db_url).start(),
                     Worker("cpu", url, db_url, env={"CPU_CONCURRENCY": "2"}).start(),
                     Worker("io", url, db_url, env={"IO_CONCURRENCY": "20"}).start()]
        try:
            for worker in processes[1:]:
                worker.wait_ready()
            wait_for(lambda: {w["hostname"] for w in registry.known_workers() if w["pool"] != "?"}
                     >= {p.nodename for p in processes[1:]}, timeout=60, message="both workers announced")
            user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_staff": True})
            client = APIClient(HTTP_HOST="127.0.0.1")
            client.force_authenticate(user)
            rows = [
                ("health_report() (fast)", lambda: health_report(), args.repeat),
                ("health_report(live=True)", lambda: health_report(live=True), 3),
            ]
            for path in ("health/", "stats/", "workers/"):
                rows.append((f"GET /api/v1/{path}", lambda p=path: client.get(f"/api/v1/{p}"), args.repeat))
                rows.append((f"GET /api/v1/{path}?live=1", lambda p=path: client.get(f"/api/v1/{p}?live=1"), 3))
            print(f"{'what':<34} {'median ms':>10} {'max ms':>8}  (runs)")
            for name, call, repeat in rows:
                median, worst = timed(call, repeat)
                print(f"{name:<34} {median:>10.1f} {worst:>8.1f}  ({repeat})")
        finally:
            for process in processes:
                process.stop()


if __name__ == "__main__":
    main()
