"""Delivery guarantees that only a real broker and real workers can show."""
import time
from contextlib import contextmanager

import pytest
from celery import states
from django_celery_results.models import TaskResult

from project import topology
from project.celery import app
from tests.support import rabbit
from tests.support.tasks import cpu_crash, cpu_mark, io_always_transient, io_flaky, io_mark, io_sleep
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_after_a_bounded_number_of_deliveries(
        start_worker, broker_url, effects, tmp_path):
    worker = start_worker("cpu", env={"CPU_CONCURRENCY": "1"})
    innocent = str(tmp_path / "innocent.log")
    rabbit.get_messages(broker_url, "dataset.dead", limit=1000)

    # This worker alone: a CI run once had the session's shared cpu worker take the poison message and hold
    # it received but never started (see the session note of 2026-12-02), which is not what this test is about.
    with sole_consumer_of("dataset", worker.nodename):
        poison = cpu_crash.delay(effects.path)
        bystanders = [cpu_mark.delay(innocent, str(i)) for i in range(5)]

        wait_for(lambda: rabbit.queue_message_count(broker_url, "dataset.dead") == 1, timeout=120,
                 message="the poison message in dataset.dead")
        for result in bystanders:
            result.get(timeout=60)
    [letter] = rabbit.get_messages(broker_url, "dataset.dead")
    assert letter.headers["id"] == poison.id
    assert letter.headers["x-death"][0]["reason"] == "delivery_limit"
    # delivered once plus x-delivery-limit redeliveries, then never again
    assert effects.count("crash") == topology.LANES_BY_NAME["dataset"].delivery_limit + 1
    time.sleep(2)
    assert effects.count("crash") == topology.LANES_BY_NAME["dataset"].delivery_limit + 1
    assert open(innocent).read().count("\n") == 5  # each innocent task ran exactly once
    assert worker.alive() and worker.children()  # the pool replaced its killed child


def test_a_countdown_longer_than_consumer_timeout_runs_once_on_time_without_holding_a_worker(
        start_worker, broker_url, effects):
    rabbit.set_consumer_timeout(3000)  # channels opened from now on: 3 s instead of 30 min
    try:
        worker = start_worker("io", env={"IO_CONCURRENCY": "1"})
    finally:
        rabbit.set_consumer_timeout(1800000)
    with sole_consumer_of("ops_trace", worker.nodename):
        countdown = 10
        sent_at = time.time()
        delayed = io_mark.apply_async((effects.path, "delayed"), countdown=countdown)

        # While it waits, it is in RabbitMQ's delay queues, not reserved by the worker, which stays free.
        time.sleep(2)
        inspect = app.control.inspect(destination=[worker.nodename], timeout=2)
        assert inspect.scheduled()[worker.nodename] == []
        assert inspect.reserved()[worker.nodename] == []
        assert io_mark.delay(effects.path, "meanwhile").get(timeout=30)["hostname"] == worker.nodename

        assert delayed.get(timeout=60)["hostname"] == worker.nodename
    ran = [line for line in effects.lines() if "delayed" in line]
    assert len(ran) == 1
    ran_at = float(ran[0].split()[0])
    assert sent_at + countdown - 0.5 <= ran_at <= sent_at + countdown + 5, ran_at - sent_at
    time.sleep(4)  # past another consumer_timeout: no redelivery, no second run
    assert effects.count("delayed") == 1
    assert worker.alive()


@contextmanager
def sole_consumer_of(queue: str, nodename: str):
    """Have every other worker stop consuming ``queue`` for the duration (Celery remote control).

    RabbitMQ's consumer count says when it holds: a worker slow to answer one inspect (a CI run's idle
    test had its task taken by a worker that missed the 2 s inspect) is asked again until it has stopped.
    """
    from apps.core.broker import queue_depths

    others: set[str] = set()

    def alone():
        consuming = app.control.inspect(timeout=2).active_queues() or {}
        found = {node for node, queues in consuming.items()
                 if node != nodename and any(q["name"] == queue for q in queues)}
        if found:
            app.control.cancel_consumer(queue, destination=sorted(found), reply=True, timeout=5)
            others.update(found)
        return nodename in consuming and queue_depths([queue])[0].consumers == 1

    try:
        wait_for(alone, timeout=60, interval=0.5, message=f"{nodename} to be the only consumer of {queue}")
        yield
    finally:
        if others:
            app.control.add_consumer(queue, destination=sorted(others), reply=True)


def test_transient_errors_are_retried_and_then_succeed(io_worker, effects):
    result = io_flaky.delay(effects.path, failures=2, error="ConnectionError")
    assert result.get(timeout=60) == 2
    assert [line.split(" ", 2)[2] for line in effects.lines()] == ["attempt 0", "attempt 1", "attempt 2"]
    times = [float(line.split()[0]) for line in effects.lines()]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:])), times  # at least 1 s, even when jitter says 0


def test_transient_retries_are_bounded_and_end_in_a_visible_failure(io_worker, effects):
    result = io_always_transient.delay(effects.path)  # max_retries=2
    with pytest.raises(ConnectionError):
        result.get(timeout=60)
    assert effects.count("attempt") == 3
    assert TaskResult.objects.get(task_id=result.id).status == states.FAILURE


def test_the_base_task_retry_policy_is_exponential_with_jitter_and_bounded():
    from apps.core.tasks import TRANSIENT_ERRORS, PlatformTask

    assert app.Task is PlatformTask or issubclass(app.Task, PlatformTask)
    assert PlatformTask.retry_backoff is True and PlatformTask.retry_jitter is True
    assert 0 < PlatformTask.max_retries <= 10 and PlatformTask.retry_backoff_max <= 3600
    assert ConnectionError in TRANSIENT_ERRORS and ValueError not in TRANSIENT_ERRORS


def test_non_transient_errors_fail_at_once_and_are_recorded(io_worker, effects):
    result = io_flaky.delay(effects.path, failures=5, error="ValueError")
    with pytest.raises(ValueError):
        result.get(timeout=30)
    assert effects.count("attempt") == 1
    assert TaskResult.objects.get(task_id=result.id).status == states.FAILURE


def test_time_limits_are_enforced_on_the_io_pool(io_worker, effects):
    soft = io_sleep.apply_async((30, effects.path), soft_time_limit=1, time_limit=3)
    with pytest.raises(Exception, match="soft time limit"):
        soft.get(timeout=30)
    assert effects.count("start") == 1 and effects.count("end") == 0


def test_hard_time_limit_stops_an_io_task_that_ignores_the_soft_one(io_worker, effects):
    stubborn = io_sleep.apply_async((30, effects.path, True), soft_time_limit=1, time_limit=3)
    with pytest.raises(Exception, match="hard time limit"):
        stubborn.get(timeout=30)
    assert effects.count("soft") == 1 and effects.count("end") == 0
    assert TaskResult.objects.get(task_id=stubborn.id).status == states.FAILURE


def test_an_idle_eventlet_worker_keeps_its_broker_connections_through_heartbeats(start_worker, effects):
    # Heartbeat 2 s: RabbitMQ drops a client that misses two; the worker must consume and send them.
    worker = start_worker("io", env={"CELERY_BROKER_HEARTBEAT": "2", "IO_CONCURRENCY": "5"})
    with sole_consumer_of("ops_trace", worker.nodename):
        time.sleep(12)  # several heartbeat intervals with nothing to do
        assert worker.alive()
        assert io_mark.delay(effects.path, "after idle").get(timeout=30)["hostname"] == worker.nodename
    assert "missed heartbeat" not in worker.log().lower() and "connection reset" not in worker.log().lower()
