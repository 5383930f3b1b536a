"""The io role's pools (eventlet by default, threads by IO_POOL) and a quiet start.

Time limits on the threads pool are enforced by apps.core.tasks.ThreadTimeLimits (Celery's threads pool
enforces none): tested here in-process and through a real threads worker in every pass; bin/test also
runs the io tests (mail, tracing, time limits) with IO_POOL=threads once.
"""
import os
import re
import subprocess
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.test import override_settings

from apps.core.tasks import ThreadTimeLimits, seconds_to_limit
from project.celery import app
from tests.core.test_delivery import sole_consumer_of
from tests.support.tasks import io_sleep
from tests.support.workers import ROOT

with_workers = pytest.mark.django_db(transaction=True)


def in_a_thread(body):
    """Run ``body`` in a new OS thread; return what it returned or raised, and when."""
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            outcome["value"] = body()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the limited thread never ended"
    return outcome


def busy(seconds: float, catch=()):
    """Python code that runs for ``seconds`` (a limit arrives at its next instruction)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.01)
        except catch:
            pass
    return "finished"


def test_thread_limits_raise_the_soft_limit_in_the_task_thread():
    limits = ThreadTimeLimits()

    def task():
        with limits.limit(0.3, 2):
            assert 0 < seconds_to_limit() <= 0.3
            return busy(5)

    outcome = in_a_thread(task)
    assert isinstance(outcome.get("error"), SoftTimeLimitExceeded), outcome
    assert "soft time limit (0.3s) exceeded" in str(outcome["error"])
    assert 0.25 < outcome["seconds"] < 1.5


def test_thread_limits_hard_limit_ends_a_task_that_swallows_the_exceptions():
    limits = ThreadTimeLimits()

    def task():
        with limits.limit(0.2, 0.5):
            busy(0.4, catch=SoftTimeLimitExceeded)  # ignores the soft limit
            try:
                busy(10)
            except TimeLimitExceeded:  # and swallows the hard one (a broad except): it comes again
                pass
            return busy(10)

    outcome = in_a_thread(task)
    assert isinstance(outcome.get("error"), TimeLimitExceeded), outcome
    assert "hard time limit (0.5s) exceeded" in str(outcome["error"])
    assert 1.3 < outcome["seconds"] < 5  # the second one, HARD_REPEAT_SECONDS after the first


def test_thread_limits_never_fire_after_the_task_ended():
    limits = ThreadTimeLimits()

    def task():
        for _ in range(200):
            with limits.limit(0.05, 0.1):
                pass
        assert seconds_to_limit() is None
        return busy(0.5)  # past every deadline above: nothing may arrive here

    assert in_a_thread(task) == {"value": "finished", "seconds": pytest.approx(0.5, abs=0.4)}


def test_a_limit_arriving_while_the_task_ends_is_raised_once_and_nothing_arrives_after(monkeypatch):
    """The limit can be delivered at any instruction of the code that disarms it as the task ends (here:
    its first call). Disarming must still complete, or the hard limit would hit the thread's next task."""
    from apps.core import tasks

    limits = ThreadTimeLimits()
    disarm = limits._disarm
    calls = []

    def interrupted_once(entry, count):
        calls.append(entry["armed"])
        if len(calls) == 1:
            raise tasks._limit_exception(tasks._AsyncHardLimit, "hard time limit (0.2s) exceeded")
        disarm(entry, count)

    monkeypatch.setattr(limits, "_disarm", interrupted_once)

    def task():
        try:
            with limits.limit(None, 0.2):
                pass
        except TimeLimitExceeded as exc:
            raised = str(exc)
        else:
            raised = None
        return raised, busy(1.5)  # past the deadline and a repeat: nothing may arrive here

    raised, after = in_a_thread(task)["value"]
    assert "hard time limit (0.2s) exceeded" in raised and after == "finished"
    assert calls == [True, True]


@with_workers
def test_soft_and_hard_time_limits_hold_on_a_threads_worker(start_worker, effects):
    worker = start_worker("io", env={"IO_POOL": "threads", "IO_CONCURRENCY": "4"})
    with sole_consumer_of("ops_trace", worker.nodename):
        soft = io_sleep.apply_async((30, effects.path), soft_time_limit=1, time_limit=3)
        with pytest.raises(SoftTimeLimitExceeded, match=r"soft time limit \(1s\)"):
            soft.get(timeout=30)
        stubborn = io_sleep.apply_async((30, effects.path, True), soft_time_limit=1, time_limit=3)
        with pytest.raises(TimeLimitExceeded, match=r"hard time limit \(3s\)"):
            stubborn.get(timeout=30)
    assert effects.count("start") == 2 and effects.count("soft") == 2 and effects.count("end") == 0
    assert "(thread)" in worker.log()  # Celery's banner: concurrency N (thread)


def warnings_in(log: str) -> list[str]:
    """Lines of a worker's log that carry a warning, but Celery's notice that it runs as root, which says
    where it runs (CI and this machine run as root; the container image does not), not how it is set up."""
    lines = log.splitlines()
    if os.geteuid() == 0:
        lines = [line for line in lines if "running the worker with superuser privileges" not in line
                 and "_warn_or_raise_security_error(" not in line]
    return [line for line in lines if re.search(r"warn|deprecat", line, re.I)]


@with_workers
def test_a_worker_starts_without_warnings(start_worker, cpu_worker):
    # The io worker on the pool this run tests (IO_POOL), and the shared cpu worker (prefork), once ready.
    io = start_worker("io", env={"IO_CONCURRENCY": "4"})
    for worker in (io, cpu_worker):
        start = worker.log().split(" ready.", 1)[0]
        assert " ready." in worker.log()
        assert warnings_in(start) == [], f"{worker.nodename} started with warnings:\n" + "\n".join(warnings_in(start))


def test_the_io_start_script_refuses_a_pool_it_does_not_support():
    result = subprocess.run([str(ROOT / "compose" / "start" / "io")], env={**os.environ, "IO_POOL": "solo"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "IO_POOL=solo is not a pool of the io role (eventlet or threads)" in result.stderr


def test_celery_configuration_follows_override_settings():
    assert app.conf.task_soft_time_limit != 7
    default = app.conf.task_soft_time_limit
    with override_settings(CELERY_TASK_SOFT_TIME_LIMIT=7, CELERY_DB_REUSE_MAX=3):
        assert app.conf.task_soft_time_limit == 7
        assert app.conf.get("CELERY_DB_REUSE_MAX") == 3  # kept under its Django name (Celery's Django fixup)
    assert app.conf.task_soft_time_limit == default


def test_celery_reads_its_settings_under_its_own_names():
    # Old-style names (CELERY_RESULT_EXTENDED ...) are what made Celery warn about every one of them at each
    # worker start; it lists the ones it found here.
    assert app.conf.deprecated_settings == set()
    assert app.conf.result_extended is True and app.conf.task_acks_late is True
