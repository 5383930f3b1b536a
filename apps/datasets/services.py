"""Writes: register an import, run its steps (called by the tasks), record progress, failure and cancel.

State rules that keep a profile trustworthy:
* a dataset leaves QUEUED/RUNNING exactly once, by a conditional UPDATE (``_settle``), so a cancel,
  a failure, a time-out and the final merge can race and only the first one counts;
* the profile is written in the same UPDATE that sets READY, so a partial profile is never shown.

The steps take plain values and a ``progress`` callback, never a Celery task: tasks.py (the adapters)
builds the callback. Tasks are published by their pinned names (``app.signature``), not imported:
tasks.py imports this module, and importing it back would be a cycle.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import kombu.exceptions
from celery import chord
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from apps.core.amqp import active_batch
from apps.core.broker import queue_depths
from apps.core.bulk import confirmed_batch
from apps.core.workers import held_task_ids
from apps.datasets import pipeline
from apps.datasets.models import ACTIVE_STATUSES, Dataset, Status
from apps.datasets.source import DatasetInputError, Plan
from project import topology
from project.celery import app

logger = logging.getLogger(__name__)

# progress(task_id, fields): the import's progress, reported on its task id (the one --wait, the demo and the
# API follow). fields: dataset_id, stage, rows_processed, rows_total, chunks_done, chunks_total.
Progress = Callable[[str, dict], None]

OPTION_KEYS = {"chunk_bytes", "soft_time_limit", "time_limit", "pause_per_chunk", "pause_in_scan", "encoding"}


# --- configuration -----------------------------------------------------------------------------------

def datasets_root() -> Path:
    return Path(settings.DATASETS_ROOT)


def workdir_for(dataset: Dataset) -> Path:
    """One directory per import, never reused (SQLite may reuse the id of a deleted row; the uuid is not)."""
    return datasets_root() / "runs" / f"{dataset.pk}-{dataset.task_id}"


def remove_workdir(dataset: Dataset) -> None:
    """Delete an import's files (Parquet copy, scratch); the row and its profile stay."""
    pipeline.remove_workdir(workdir_for(dataset))


def limits_for(dataset: Dataset) -> pipeline.Limits:
    return pipeline.Limits(
        chunk_bytes=int(dataset.options.get("chunk_bytes") or settings.DATASETS_CHUNK_BYTES),
        max_line_bytes=settings.DATASETS_MAX_LINE_BYTES,
        exact_distinct_bound=settings.DATASETS_EXACT_DISTINCT_BOUND,
        hash_group_bytes=settings.DATASETS_HASH_GROUP_BYTES,
        chunk_multiple=settings.DATASETS_CHUNK_MULTIPLE,
    )


def time_limits_for(dataset: Dataset) -> dict:
    soft = float(dataset.options.get("soft_time_limit") or settings.DATASETS_SOFT_TIME_LIMIT)
    hard = float(dataset.options.get("time_limit") or max(settings.DATASETS_TIME_LIMIT, soft + 30))
    return {"soft_time_limit": soft, "time_limit": hard}


# --- registering -------------------------------------------------------------------------------------

def validate_options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(OPTION_KEYS))}")
    for key, value in options.items():
        if key == "encoding":
            if not isinstance(value, str) or not value:
                raise ValueError(f"option encoding must be a text encoding name, got {value!r}")
            continue  # an unknown name is reported on the dataset by the worker
        if not isinstance(value, (int, float)) or value < 0 or (key == "chunk_bytes" and value < 1024):
            raise ValueError(f"option {key} must be a number >= {1024 if key == 'chunk_bytes' else 0}, got {value!r}")
    return options


def register_dataset(path: str, name: str | None = None, options: dict | None = None) -> Dataset:
    """Create the next version of dataset ``name`` for the file at ``path`` and enqueue it after commit.

    The file is checked by the worker, not here: a missing file becomes a FAILED dataset with a message.
    """
    options = validate_options(options)
    path = str(Path(path).expanduser().absolute())
    name = (name or Path(path).stem).strip()[:200] or "dataset"
    for attempt in range(5):  # two imports of one name at once: the unique (name, version) decides
        try:
            with transaction.atomic():
                version = (Dataset.objects.filter(name=name).aggregate(v=Max("version"))["v"] or 0) + 1
                dataset = Dataset.objects.create(name=name, version=version, source_path=path, options=options,
                                                 task_id=str(uuid.uuid4()), start_task_id=str(uuid.uuid4()))
                transaction.on_commit(lambda: _enqueue(dataset))
            return dataset
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def register_upload(upload, name: str | None = None, options: dict | None = None) -> Dataset:
    """Store an uploaded file under DATASETS_ROOT/uploads and register it."""
    filename = Path(upload.name or "upload.csv").name
    target = datasets_root() / "uploads" / uuid.uuid4().hex / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for piece in upload.chunks():
            out.write(piece)
    return register_dataset(str(target), name=name or Path(filename).stem, options=options)


def reimport(dataset: Dataset) -> Dataset:
    """A new version of the same dataset from the same path."""
    return register_dataset(dataset.source_path, name=dataset.name, options=dataset.options)


def _enqueue(dataset: Dataset) -> None:
    """Publish the import; if RabbitMQ refuses it (queue full, broker down) the dataset is FAILED with the
    reason instead of waiting QUEUED for a task that does not exist, and the caller gets the error (at
    once, or when the confirmed batch it was published in ends: apps/core/bulk.py)."""
    def not_enqueued(reason: str) -> None:
        _settle(dataset.pk, Status.FAILED, "not enqueued", error=f"not enqueued: {reason}")

    try:
        app.signature("datasets.start_import", args=(dataset.pk,)).apply_async(
            task_id=dataset.start_task_id, **time_limits_for(dataset))
    except kombu.exceptions.OperationalError as exc:  # QueueFull is one; nothing was enqueued
        not_enqueued(str(exc) or type(exc).__name__)
        raise
    batch = active_batch()
    if batch is not None:  # in a confirmed batch (manage.py demo): refusals are known when it ends
        batch.if_not_enqueued(dataset.start_task_id, not_enqueued)


# --- settling a dataset exactly once -----------------------------------------------------------------

def _settle(dataset_id: int, status: str, stage: str, **fields) -> bool:
    """Move an active dataset to a final status; False if something else settled it first."""
    updated = Dataset.objects.filter(pk=dataset_id, status__in=ACTIVE_STATUSES).update(
        status=status, stage=stage, finished_at=timezone.now(), **fields)
    if updated and status != Status.READY:
        _end_task_state(dataset_id, status, fields.get("error", ""))
    return bool(updated)


def _end_task_state(dataset_id: int, status: str, message: str) -> None:
    """Whoever follows the import's task id (--wait, the demo, the API) sees it end, not PROGRESS forever:
    after a failed scan or a cancel that task never runs."""
    task_id = Dataset.objects.values_list("task_id", flat=True).get(pk=dataset_id)
    if status == Status.CANCELLED:
        app.backend.mark_as_revoked(task_id, reason=message)
    else:
        app.backend.mark_as_failure(task_id, RuntimeError(f"dataset {dataset_id} {status}: {message}"))


def cancel_dataset(dataset_id: int) -> bool:
    """Stop a queued or running import: the flag stops running tasks, revoke drops queued ones."""
    if not _settle(dataset_id, Status.CANCELLED, "cancelled", error="cancelled by a user"):
        return False
    dataset = Dataset.objects.get(pk=dataset_id)
    ids = [dataset.start_task_id, *dataset.chunk_task_ids, dataset.task_id]
    app.control.revoke([i for i in ids if i])
    return True


def record_input_error(dataset_id: int, error: DatasetInputError) -> bool:
    return _settle(dataset_id, Status.FAILED, "failed", error=error.message,
                   error_row=error.row, error_column=error.column or "")


def record_unexpected_error(dataset_id: int, what: str, error: BaseException) -> bool:
    return _settle(dataset_id, Status.FAILED, "failed", error=f"{what} failed: {type(error).__name__}: {error}")


def record_timeout(dataset_id: int, what: str, limit: float | None) -> bool:
    return _settle(dataset_id, Status.TIMED_OUT, "timed out",
                   error=f"{what} exceeded its soft time limit ({limit:g} s): the import was stopped. Use smaller "
                         "chunks (chunk_bytes) or a longer limit (DATASETS_SOFT_TIME_LIMIT) and import again.")


def record_hard_timeout(dataset_id: int, task_name: str, limit: float | None) -> bool:
    return _settle(dataset_id, Status.TIMED_OUT, "timed out",
                   error=f"{task_name} hit its hard time limit ({limit:g} s) and its worker child was killed: "
                         "the import was stopped. Use smaller chunks or a longer limit (DATASETS_TIME_LIMIT).")


def is_running(dataset_id: int) -> bool:
    return Dataset.objects.filter(pk=dataset_id, status=Status.RUNNING).exists()


# --- the steps (called by the tasks) -----------------------------------------------------------------

def _report(progress: Progress, dataset_id: int) -> None:
    """Report the import's progress, only while the dataset is RUNNING: a settled import's task id has its
    final state. (A chunk that read RUNNING just before another one settled the dataset can still report
    once; the chord then ends the id with the failure of the failed chunk, or the cancel's revoke.)
    """
    row = Dataset.objects.filter(pk=dataset_id, status=Status.RUNNING).values(
        "task_id", "stage", "rows_processed", "rows_total", "chunks_done", "chunks_total").first()
    if row is not None:
        task_id = row.pop("task_id")
        progress(task_id, {"dataset_id": dataset_id, **row})


def start_import(dataset_id: int, redelivered: bool, progress: Progress) -> dict:
    """Scan the file, then fan the chunks out to prefork children with a chord that merges them (one
    confirmed batch: apps/core/bulk.py). ``redelivered``: RabbitMQ delivered this start message before."""
    may_start = Q(status=Status.QUEUED)
    if redelivered:
        # RabbitMQ gave this message back: the worker that took it died. If it died during the scan (before
        # any chunk was published), scan again; otherwise the dataset would stay RUNNING forever.
        may_start |= Q(status=Status.RUNNING, stage="scanning")
    started = Dataset.objects.filter(may_start, pk=dataset_id).update(
        status=Status.RUNNING, stage="scanning", started_at=timezone.now())
    if not started:
        return {"dataset_id": dataset_id, "skipped": "not queued (cancelled?)"}
    dataset = Dataset.objects.get(pk=dataset_id)
    _report(progress, dataset_id)
    if dataset.options.get("pause_in_scan"):
        time.sleep(float(dataset.options["pause_in_scan"]))  # demo/test option: a worker can be killed mid-scan
    plan = pipeline.plan_import(dataset.source_path, workdir_for(dataset), limits_for(dataset),
                                encoding=dataset.options.get("encoding"))
    chunk_ids = [str(uuid.uuid4()) for _ in plan.chunks]
    updated = Dataset.objects.filter(pk=dataset_id, status=Status.RUNNING).update(
        plan=plan.to_json(), stage="profiling", rows_total=plan.data_rows_estimate,
        chunks_total=len(plan.chunks), chunk_task_ids=chunk_ids)
    if not updated:
        return {"dataset_id": dataset_id, "skipped": "cancelled during the scan"}
    _report(progress, dataset_id)

    limits = time_limits_for(dataset)
    header = [app.signature("datasets.profile_chunk", args=(dataset_id, c.index, c.offset, c.length, c.first_line),
                            immutable=True).set(task_id=chunk_ids[c.index], **limits)
              for c in plan.chunks]
    # The chunk messages are confirmed together, not one round trip each; a refused one fails the scan
    # with BulkPublishError (the dataset is FAILED with its message).
    with confirmed_batch():
        chord(header)(app.signature("datasets.finish_import", args=(dataset_id,)).set(task_id=dataset.task_id, **limits))
    return {"dataset_id": dataset_id, "chunks": len(plan.chunks), "rows_estimate": plan.data_rows_estimate}


def profile_chunk(dataset_id: int, index: int, offset: int, length: int, first_line: int, progress: Progress) -> dict:
    dataset = Dataset.objects.get(pk=dataset_id)
    if dataset.status != Status.RUNNING:
        return {"index": index, "skipped": dataset.status}
    plan = Plan.from_json(dataset.plan)
    chunk = plan.chunks[index]
    if (chunk.offset, chunk.length, chunk.first_line) != (offset, length, first_line):
        raise ValueError(f"chunk {index} of dataset {dataset_id} does not match its plan")
    pause = float(dataset.options.get("pause_per_chunk") or 0)
    if pause:
        time.sleep(pause)  # demo/test option: makes progress, cancel and time limits observable
        if not is_running(dataset_id):
            return {"index": index, "skipped": "cancelled"}
    result = pipeline.process_chunk(plan, chunk, workdir_for(dataset), limits_for(dataset))
    if not result["done_before"]:  # a redelivered chunk's rows were counted by its first run
        Dataset.objects.filter(pk=dataset_id, status=Status.RUNNING).update(
            rows_processed=F("rows_processed") + result["rows"], chunks_done=F("chunks_done") + 1)
    _report(progress, dataset_id)
    return {**result, "pid": os.getpid()}


def finish_import(results: list[dict], dataset_id: int, progress: Progress) -> dict:
    """Merge the chunks' partial profiles; store the profile with READY in one conditional UPDATE."""
    updated = Dataset.objects.filter(pk=dataset_id, status=Status.RUNNING).update(stage="merging")
    if not updated or any("skipped" in r for r in results):
        status = Dataset.objects.values_list("status", flat=True).get(pk=dataset_id)
        return {"dataset_id": dataset_id, "status": status, "stored": False}
    dataset = Dataset.objects.get(pk=dataset_id)
    _report(progress, dataset_id)
    plan = Plan.from_json(dataset.plan)
    profile = pipeline.merge_chunks(plan, workdir_for(dataset), limits_for(dataset), {
        "peak_rss_kib": max(r["peak_rss_kib"] for r in results),
        "chunk_seconds": round(sum(r["seconds"] for r in results), 3),
        "chunk_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 3),
    })
    finished = timezone.now()
    profile["elapsed_seconds"] = round((finished - dataset.created_at).total_seconds(), 3)
    stored = _settle(dataset_id, Status.READY, "done", profile=profile, row_count=profile["rows"],
                     column_count=profile["columns_count"], rows_processed=profile["rows"])
    return {"dataset_id": dataset_id, "status": Status.READY if stored else "settled elsewhere", "stored": stored,
            "rows": profile["rows"]}


# --- the watchdog: nothing stuck forever ---------------------------------------------------------------

def recover_stuck(stale_after: float | None = None, max_requeues: int | None = None) -> dict:
    """Find imports nobody is working on and deal with them, like mail's requeue_stale:

    * QUEUED for ``stale_after`` seconds (since created or last re-published), its start task held by no
      worker of this deployment: published again (the conditional QUEUED -> RUNNING admits one copy), at
      most ``max_requeues`` times; then FAILED with the reason. Seen when another stack's worker on the
      same vhost took the message, or a publish was lost.
    * RUNNING for ``stale_after`` seconds, none of its tasks held by a worker of this deployment and no
      progress meanwhile: FAILED with the reason (its worker vanished with the work).

    Only while the dataset queue has no ready message: a message waiting there may be the one that will
    move the import on (a killed worker's task goes back to the queue), so nothing is decided then.
    """
    stale_after = settings.DATASETS_STALE_AFTER if stale_after is None else stale_after
    max_requeues = settings.DATASETS_MAX_REQUEUES if max_requeues is None else max_requeues
    now = timezone.now()
    cutoff = now - timedelta(seconds=stale_after)
    queued = list(Dataset.objects.filter(status=Status.QUEUED).filter(
        Q(requeued_at__lt=cutoff) | Q(requeued_at__isnull=True, created_at__lt=cutoff)))
    running = list(Dataset.objects.filter(status=Status.RUNNING, started_at__lt=cutoff))
    outcome: dict = {"requeued": [], "failed": [], "waiting_in_queue": False}
    if not queued and not running:
        return outcome

    def waiting() -> bool:
        [depth] = queue_depths([topology.DATASET])
        return depth.messages != 0  # a message is waiting (or the queue is missing: cannot tell)

    progress = {d.pk: (d.stage, d.chunks_done) for d in running}
    if waiting():
        outcome["waiting_in_queue"] = True
        return outcome
    held = held_task_ids()
    if waiting():  # published meanwhile: a task moved the import on between the two looks
        outcome["waiting_in_queue"] = True
        return outcome

    for dataset in queued:
        if dataset.start_task_id in held:
            continue
        age = round((now - dataset.created_at).total_seconds())
        if dataset.requeues >= max_requeues:
            if _settle(dataset.pk, Status.FAILED, "failed", error=(
                    f"the import never started: published {dataset.requeues + 1} time(s) over {age} s and no worker "
                    f"of this deployment ran it (another stack's worker on this vhost taking the dataset queue? "
                    f"see `manage.py health`); import it again")):
                outcome["failed"].append(dataset.pk)
            continue
        if Dataset.objects.filter(pk=dataset.pk, status=Status.QUEUED, requeues=dataset.requeues).update(
                requeues=F("requeues") + 1, requeued_at=now):
            logger.warning("dataset %s: QUEUED for %s s and held by no worker; publishing its start task again "
                           "(%d of %d)", dataset.pk, age, dataset.requeues + 1, max_requeues)
            _enqueue(Dataset.objects.get(pk=dataset.pk))
            outcome["requeued"].append(dataset.pk)

    for dataset in running:
        ids = {dataset.start_task_id, dataset.task_id, *dataset.chunk_task_ids}
        current = Dataset.objects.filter(pk=dataset.pk).values_list("stage", "chunks_done").first()
        if ids & held or current != progress[dataset.pk]:
            continue
        if _settle(dataset.pk, Status.FAILED, "failed", error=(
                f"its worker vanished: in stage {dataset.stage} ({dataset.chunks_done} of {dataset.chunks_total} "
                f"chunks done) no worker of this deployment holds any of its tasks and none is waiting in the "
                f"dataset queue; import it again")):
            outcome["failed"].append(dataset.pk)
    return outcome
