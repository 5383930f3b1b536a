"""Dataset tasks on the prefork `dataset` queue: thin adapters over services.py.

Each task owns its failure policy: bad input marks the dataset FAILED with the message, the soft time
limit marks it TIMED_OUT, anything unexpected marks it FAILED; then the exception is re-raised so Celery
records the task as failed too (a chunk failure fails the chord, and the chord's callback with it).
Transient errors (database, broker) are left to PlatformTask's bounded retries.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_process_init

from apps.control.progress import report_progress
from apps.core.tasks import TRANSIENT_ERRORS, PlatformTask, where_am_i
from apps.datasets import pipeline, services
from apps.datasets.source import DatasetInputError


logger = logging.getLogger(__name__)


@worker_process_init.connect
def one_core_per_child(**kwargs):
    """Each prefork child profiles one chunk on one core (see pipeline.use_one_core_per_process)."""
    pipeline.use_one_core_per_process()


@shared_task(name="datasets.probe")
def probe() -> dict:
    """A no-op on the dataset lane (prefork): reports the worker, pool and queue that ran it."""
    return where_am_i()


def progress_of(task) -> services.Progress:
    """The services' progress callback for ``task``: Celery state PROGRESS on the import's task id, and the
    same progress as a task-progress event (the control ledger and the live progress page follow it)."""
    def report(task_id: str, fields: dict) -> None:
        task.update_state(task_id=task_id, state="PROGRESS", meta=fields)
        report_progress(task, step=fields["stage"], current=fields["rows_processed"], total=fields["rows_total"],
                        task_id=task_id)

    return report


@contextmanager
def settles_dataset(task, dataset_id: int, what: str):
    try:
        yield
    except TRANSIENT_ERRORS:
        raise
    except SoftTimeLimitExceeded:
        services.record_timeout(dataset_id, what, task.effective_time_limits()[0])
        raise
    except DatasetInputError as exc:
        services.record_input_error(dataset_id, exc)
        raise
    except Exception as exc:
        services.record_unexpected_error(dataset_id, what, exc)
        raise


class DatasetTask(PlatformTask):
    """Settles the dataset when the task has failed for good, whatever the cause.

    ``settles_dataset`` records bad input, soft limits and bugs inside the task. Two failures end a task
    without passing through it: the hard time limit (the pool killed the child; Celery 5.7 calls
    ``on_failure`` in the worker's main process) and transient errors that outlived their retries.
    Settling is conditional, so a dataset already settled keeps its first, more precise, error.
    """

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if args:
            dataset_id = args[1] if self.name == "datasets.finish_import" else args[0]
            try:
                if isinstance(exc, TimeLimitExceeded):
                    services.record_hard_timeout(dataset_id, self.name, self.effective_time_limits()[1])
                else:
                    services.record_unexpected_error(dataset_id, self.name, exc)
            except Exception:  # the database may be what failed; the task failure itself is recorded by Celery
                logger.exception("could not record the failure of %s on dataset %s", self.name, dataset_id)
        super().on_failure(exc, task_id, args, kwargs, einfo)


@shared_task(bind=True, base=DatasetTask, name="datasets.start_import")
def start_import(self, dataset_id: int) -> dict:
    with settles_dataset(self, dataset_id, "the scan"):
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        return services.start_import(dataset_id, redelivered, progress_of(self))


@shared_task(bind=True, base=DatasetTask, name="datasets.profile_chunk")
def profile_chunk(self, dataset_id: int, index: int, offset: int, length: int, first_line: int) -> dict:
    with settles_dataset(self, dataset_id, f"chunk {index} (from line {first_line})"):
        return services.profile_chunk(dataset_id, index, offset, length, first_line, progress_of(self))


@shared_task(bind=True, base=DatasetTask, name="datasets.finish_import")
def finish_import(self, results: list[dict], dataset_id: int) -> dict:
    with settles_dataset(self, dataset_id, "the merge"):
        return services.finish_import(results, dataset_id, progress_of(self))


@shared_task(name="datasets.recover_stuck")
def recover_stuck() -> dict:
    """The watchdog (seeded schedule, every minute): imports nobody works on are re-published or FAILED."""
    return services.recover_stuck()
