"""Progress, cancel and time limits through the real broker and a real prefork worker."""
from __future__ import annotations

import time
import uuid

import pytest
from celery.result import AsyncResult
from django_celery_results.models import TaskResult

from apps.datasets import services
from apps.datasets.models import Dataset, Status
from tests.datasets.conftest import settled, write_csv
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SLOW = {"chunk_bytes": 4096, "pause_per_chunk": 0.3}  # ~30 chunks of 0.3 s+: long enough to watch


def test_progress_is_visible_on_the_row_and_in_the_celery_task_state(cpu_worker, tmp_path):
    dataset = services.register_dataset(str(write_csv(tmp_path / "p.csv", 3_000)), options=SLOW)

    def midway():
        row = Dataset.objects.get(pk=dataset.pk)
        state = AsyncResult(row.task_id)
        if row.status == Status.RUNNING and 0 < row.rows_processed < (row.rows_total or 0) and state.state == "PROGRESS":
            return row, state.info
        return None

    row, info = wait_for(midway, timeout=60, interval=0.1, message="an import midway with PROGRESS state")
    assert row.stage == "profiling" and row.rows_total == 3_000
    assert info["dataset_id"] == dataset.pk and 0 < info["rows_processed"] <= 3_000 and info["rows_total"] == 3_000
    done = settled(dataset.pk)
    assert done.status == Status.READY and done.rows_processed == 3_000
    # READY is written inside finish_import, SUCCESS by Celery just after it returns: wait for that write.
    wait_for(lambda: AsyncResult(done.task_id).state == "SUCCESS", timeout=30, interval=0.1,
             message="the finishing task's SUCCESS")


def test_cancel_stops_a_running_import_within_seconds_and_stores_no_profile(cpu_worker, tmp_path):
    dataset = services.register_dataset(str(write_csv(tmp_path / "c.csv", 3_000)), options=SLOW)
    wait_for(lambda: Dataset.objects.get(pk=dataset.pk).chunks_done >= 2, timeout=60, message="two chunks done")
    assert services.cancel_dataset(dataset.pk)
    cancelled_at = time.monotonic()

    row = Dataset.objects.get(pk=dataset.pk)
    assert row.status == Status.CANCELLED
    # Running chunks finish their current step and stop; queued ones are revoked or skip themselves.
    time.sleep(3)
    stopped = Dataset.objects.get(pk=dataset.pk)
    time.sleep(2)
    later = Dataset.objects.get(pk=dataset.pk)
    assert later.chunks_done == stopped.chunks_done < later.chunks_total
    assert later.status == Status.CANCELLED and later.profile is None and later.row_count is None
    assert time.monotonic() - cancelled_at < 10
    statuses = set(TaskResult.objects.filter(task_id__in=later.chunk_task_ids).values_list("status", flat=True))
    assert "REVOKED" in statuses or len(statuses) == 1  # queued chunks were revoked (or all skipped)
    assert not services.cancel_dataset(dataset.pk)  # settled once; a second cancel changes nothing
    # The import's task id has ended too: REVOKED, or FAILURE when Celery fails the chord for a revoked chunk.
    assert AsyncResult(later.task_id).state in ("REVOKED", "FAILURE")


def test_cancel_of_a_queued_import_never_starts_it(cpu_worker, tmp_path):
    path = write_csv(tmp_path / "q.csv", 100)
    # The blocker's chunks occupy both children, and the next import's message queues behind them.
    blocker = services.register_dataset(str(path), options={"chunk_bytes": 1024, "pause_per_chunk": 1})
    wait_for(lambda: Dataset.objects.get(pk=blocker.pk).stage == "profiling", timeout=60, message="blocker chunks queued")
    queued = services.register_dataset(str(path))
    assert services.cancel_dataset(queued.pk)
    settled(blocker.pk, timeout=120)
    queued.refresh_from_db()
    assert queued.status == Status.CANCELLED and queued.plan is None and queued.started_at is None


def test_soft_time_limit_marks_the_dataset_timed_out(cpu_worker, tmp_path):
    path = write_csv(tmp_path / "t.csv", 200)
    dataset = services.register_dataset(str(path), options={"soft_time_limit": 1, "pause_per_chunk": 5})
    dataset = settled(dataset.pk, timeout=60)
    assert dataset.status == Status.TIMED_OUT
    assert "exceeded its soft time limit (1 s)" in dataset.error and "chunk 0" in dataset.error
    assert dataset.profile is None
    assert cpu_worker.alive()
    # The worker keeps working after the time limit.
    ok = settled(services.register_dataset(str(path)).pk)
    assert ok.status == Status.READY



def test_failure_handler_settles_the_dataset_after_a_hard_limit_or_exhausted_retries(tmp_path):
    """The handler the worker's main process runs when the pool kills a child at the hard limit.

    Not driven through a worker: with a soft limit below the hard one (always, here) the soft limit
    fires first in Python code; the hard kill happens only when a C call ignores the soft signal past
    the hard limit, which a test cannot provoke reliably. Celery 5.7 calls task.on_failure for it.
    """
    from celery.exceptions import TimeLimitExceeded

    from apps.datasets.tasks import finish_import, profile_chunk

    def running(name):  # created directly: nothing is enqueued, so no worker settles it first
        return Dataset.objects.create(name=name, version=1, source_path=str(tmp_path / name), status=Status.RUNNING,
                                      task_id=str(uuid.uuid4()), start_task_id=str(uuid.uuid4()))

    chunk = running("a.csv")
    profile_chunk.on_failure(TimeLimitExceeded(660), "id", (chunk.pk, 0, 0, 10, 1), {}, None)
    chunk.refresh_from_db()
    assert chunk.status == Status.TIMED_OUT and "datasets.profile_chunk hit its hard time limit" in chunk.error

    merge = running("b.csv")
    finish_import.on_failure(TimeLimitExceeded(660), "id", ([{}], merge.pk), {}, None)
    merge.refresh_from_db()
    assert merge.status == Status.TIMED_OUT and "datasets.finish_import" in merge.error

    # Transient errors that outlived their retries settle the dataset too; a settled one keeps its error.
    from django.db import OperationalError

    flaky = running("c.csv")
    profile_chunk.on_failure(OperationalError("database is locked"), "id", (flaky.pk, 0, 0, 10, 1), {}, None)
    flaky.refresh_from_db()
    assert flaky.status == Status.FAILED and "OperationalError: database is locked" in flaky.error
    profile_chunk.on_failure(TimeLimitExceeded(660), "id", (flaky.pk, 0, 0, 10, 1), {}, None)
    flaky.refresh_from_db()
    assert flaky.status == Status.FAILED and "OperationalError" in flaky.error
