"""The database inside the io worker (eventlet, or threads with IO_POOL=threads): queries do not block the hub,
connections are bounded."""
import time

import pytest
from celery import group
from django.db import connection

from tests.support.mail_tasks import mail_db_sleep
from tests.support.workers import IO_POOL, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

postgres_only = pytest.mark.postgresql  # pg_sleep and pg_stat_activity


def db_connections(dbname: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                       [dbname])
        return cursor.fetchone()[0]


@postgres_only
def test_queries_yield_to_the_hub_and_connections_stay_bounded(start_mail_worker):
    pool_size = 4
    from project.celery import app

    worker = start_mail_worker(IO_CONCURRENCY=100, IO_DB_POOL_MAX_SIZE=pool_size)
    # Only this worker may take the probes: other mail test workers of the session stop consuming ops_trace.
    others = [node for reply in app.control.ping(timeout=2) for node in reply if node != worker.nodename]
    if others:
        app.control.cancel_consumer("ops_trace", destination=others, reply=True)
    dbname = connection.settings_dict["NAME"]
    baseline = db_connections(dbname)  # this test's own and other workers' connections
    tasks, seconds = 24, 1.0

    started = time.monotonic()
    result = group(mail_db_sleep.s(seconds) for _ in range(tasks)).apply_async()
    peak = 0
    while not result.ready():
        peak = max(peak, db_connections(dbname) - baseline)
        time.sleep(0.05)
    answers = result.get(timeout=120)
    took = time.monotonic() - started
    print(f"{tasks} x pg_sleep({seconds}) on -c 100 with a pool of {pool_size}: {took:.1f}s, "
          f"peak {peak} extra connections")

    # eventlet: psycopg's green-friendly wait (compose/start/io sets it), not wait_c; threads: psycopg's default
    assert {a["wait_func"] for a in answers} == {"wait_select" if IO_POOL == "eventlet" else "wait_c"}
    assert {a["pool_max_size"] for a in answers} == {pool_size}
    processes = {a["pid"] for a in answers}  # normally only this worker; another mail test worker may help
    assert peak <= (pool_size + 1) * len(processes)  # per process: the pool + one connection outside it at most
    # Blocking the hub would serialize them: >= 24 s. Sharing 4 connections cooperatively: ~6 s.
    assert took < tasks * seconds * 0.75
    if others:
        app.control.add_consumer("ops_trace", destination=others, reply=True)
    worker.stop()
    wait_for(lambda: db_connections(dbname) <= baseline, timeout=30, message="the worker's connections to close")
