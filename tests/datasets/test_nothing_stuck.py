"""Nothing stuck forever: a task message taken by a foreign consumer, and a worker killed mid-task.

The foreign consumer stands for another stack's worker on the same vhost (issue 16): it takes the dataset
queue's message and does the work elsewhere, so neither this deployment's workers nor the queue hold it.
"""
import os
import signal
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu import Connection

from apps.control import services as control, states
from apps.control.models import TaskRecord
from apps.core.workers import HEARTBEAT_QUEUE
from apps.datasets import services
from apps.datasets.models import Dataset, Status
from tests.datasets.conftest import settled, write_csv
from tests.support import rabbit
from tests.support.workers import Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dataset_lane_paused():
    """Our workers stop consuming `dataset` (the session's cpu worker too), so the foreign consumer is the
    one that gets the message; resumed after the test."""
    control.pause_queue("dataset")
    wait_for(lambda: consumers("dataset") == 0, timeout=30, message="our workers to stop consuming dataset")
    yield
    rabbit.get_messages(rabbit_url(), "dataset")  # what this test left waiting: nobody else's business
    control.resume_queue("dataset")


def rabbit_url() -> str:
    from project.celery import app

    return app.conf.broker_url


def consumers(queue: str) -> int:
    from apps.core.broker import queue_depths

    return queue_depths([queue])[0].consumers or 0


def take_like_a_foreign_worker(url: str, task_id: str, timeout: float = 30) -> None:
    """Take the message off the dataset queue and ack it, as another stack's worker would."""
    def taken():
        with Connection(url) as connection:
            channel = connection.channel()
            message = channel.basic_get(queue="dataset", no_ack=True)
            channel.close()
        return message is not None and message.headers.get("id") == task_id
    wait_for(taken, timeout=timeout, interval=0.3, message="the foreign consumer to take the start message")


def test_a_task_taken_by_a_foreign_consumer_is_lost_in_the_ledger_and_its_import_requeued(
        broker_url, dataset_lane_paused, tmp_path):
    dataset = services.register_dataset(str(write_csv(tmp_path / "a.csv", 200)))
    take_like_a_foreign_worker(broker_url, dataset.start_task_id)
    # The ledger as the issue found it: the task-sent event went to the other stack's recorder, so the
    # row never learnt its queue ("unknown"), and then no event came for a long time.
    if consumers(HEARTBEAT_QUEUE):  # a recorder runs in this session: let it write what it heard first
        wait_for(lambda: TaskRecord.objects.filter(task_id=dataset.start_task_id).exists(), timeout=30,
                 message="the recorder to record the task-sent event")
    TaskRecord.objects.update_or_create(task_id=dataset.start_task_id, defaults={
        "name": "datasets.start_import", "queue": "", "state": states.PROGRESS, "provisional": False})
    TaskRecord.objects.filter(task_id=dataset.start_task_id).update(updated_at=timezone.now() - timedelta(hours=1))

    assert dataset.start_task_id in control.sweep_lost(lost_after=600)
    assert TaskRecord.objects.get(task_id=dataset.start_task_id).state == states.LOST

    outcome = services.recover_stuck(stale_after=0, max_requeues=3)
    assert outcome["requeued"] == [dataset.pk]
    dataset.refresh_from_db()
    assert dataset.status == Status.QUEUED and dataset.requeues == 1
    assert rabbit.queue_message_count(broker_url, "dataset") == 1  # published again, waiting for our worker


def test_an_import_no_worker_of_ours_ever_runs_fails_with_the_reason_after_its_bound(
        broker_url, dataset_lane_paused, tmp_path):
    dataset = services.register_dataset(str(write_csv(tmp_path / "b.csv", 50)))
    take_like_a_foreign_worker(broker_url, dataset.start_task_id)
    assert services.recover_stuck(stale_after=0, max_requeues=1)["requeued"] == [dataset.pk]
    take_like_a_foreign_worker(broker_url, dataset.start_task_id)  # the copy is taken too

    assert services.recover_stuck(stale_after=0, max_requeues=1)["failed"] == [dataset.pk]
    dataset.refresh_from_db()
    assert dataset.status == Status.FAILED
    assert "never started" in dataset.error and "published 2 time(s)" in dataset.error


def test_nothing_is_decided_while_the_message_waits_in_the_queue(broker_url, dataset_lane_paused, tmp_path):
    dataset = services.register_dataset(str(write_csv(tmp_path / "c.csv", 50)))
    wait_for(lambda: rabbit.queue_message_count(broker_url, "dataset") == 1, message="the start message queued")
    outcome = services.recover_stuck(stale_after=0, max_requeues=0)
    assert outcome == {"requeued": [], "failed": [], "waiting_in_queue": True}
    assert Dataset.objects.get(pk=dataset.pk).status == Status.QUEUED


def test_an_import_whose_worker_is_killed_mid_scan_finishes_on_the_next_worker(worker_db_url, tmp_path):
    """Killed before its task finished (it was scanning, no chunk published yet): RabbitMQ gives the
    message back; the watchdog leaves the import alone while it waits, and the next worker scans again."""
    with rabbit.own_vhost("platform-test-killed") as url:  # only this test's workers on this vhost
        first = Worker("cpu", url, worker_db_url, env={"CPU_CONCURRENCY": "1"}).start().wait_ready()
        second = None
        try:
            dataset = services.register_dataset(str(write_csv(tmp_path / "d.csv", 300)), options={"pause_in_scan": 6})
            wait_for(lambda: Dataset.objects.get(pk=dataset.pk).stage == "scanning", timeout=60,
                     message="the scan to start")
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool child vanish (a host lost)
            wait_for(lambda: rabbit.queue_message_count(url, "dataset") == 1, timeout=30,
                     message="the start message back in the queue")

            assert services.recover_stuck(stale_after=0)["waiting_in_queue"] is True
            assert Dataset.objects.get(pk=dataset.pk).status == Status.RUNNING

            second = Worker("cpu", url, worker_db_url, env={"CPU_CONCURRENCY": "1"}).start().wait_ready()
            finished = settled(dataset.pk, timeout=120)
            assert finished.status == Status.READY, finished.error
            assert finished.row_count == 300
        finally:
            first.stop()
            if second is not None:
                second.stop()
