"""The demo workload: a mix of tasks across every lane, and its progress as the workers report it.

Each app registers its jobs from its AppConfig.ready() with ``register`` (a probe, a no-op that reports
where it ran, and its real work), so core names no app. Each job enqueues one unit of work on its lane
and returns the id of the task whose result says it finished. Progress is read from the result table
(django-celery-results).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from celery import states
from django_celery_results.models import TaskResult

from apps.core.bulk import confirmed_batch
from project import topology


@dataclass(frozen=True)
class DemoJob:
    queue: str
    label: str
    enqueue: Callable[[int], str]  # (sequence number) -> task id


_JOBS: dict[tuple[str, str], DemoJob] = {}


def register(queue: str, label: str, enqueue: Callable[[int], str]) -> None:
    """Add a job; registering (queue, label) again replaces it (ready() may run again)."""
    if queue not in topology.LANES_BY_NAME:
        raise ValueError(f"unknown queue {queue!r}; declared: {', '.join(topology.LANES_BY_NAME)}")
    _JOBS[(queue, label)] = DemoJob(queue, label, enqueue)


def jobs() -> list[DemoJob]:
    """The registered jobs, in registration order (the apps' in INSTALLED_APPS order)."""
    return list(_JOBS.values())


def enqueue_demo(per_job: int) -> dict[str, list[str]]:
    """Enqueue ``per_job`` units of every registered job, interleaved; return task ids by queue.

    Every task message goes into one confirmed batch (apps/core/bulk.py): confirmed together at the end,
    not one round trip each. A refusal raises BulkPublishError then; the jobs' own services settle what
    they stored (a dataset is FAILED "not enqueued"; a mail stays QUEUED for mail.requeue_stale).
    """
    ids: dict[str, list[str]] = {}
    with confirmed_batch():
        for i in range(per_job):
            for job in jobs():
                ids.setdefault(job.queue, []).append(job.enqueue(i))
    return ids


def demo_progress(ids_by_queue: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Per queue: how many tasks are done (SUCCESS), failed (FAILURE/REVOKED) and still pending."""
    all_ids = [task_id for ids in ids_by_queue.values() for task_id in ids]
    status = dict(TaskResult.objects.filter(task_id__in=all_ids).values_list("task_id", "status"))
    progress = {}
    for queue, ids in ids_by_queue.items():
        done = sum(status.get(i) == states.SUCCESS for i in ids)
        failed = sum(status.get(i) in (states.FAILURE, states.REVOKED) for i in ids)
        progress[queue] = {"done": done, "failed": failed, "pending": len(ids) - done - failed}
    return progress
