"""Cooperative cancellation for running tasks.

A long task calls ``raise_if_cancelled()`` between steps (or ``progress.checkpoint``); once an operator
cancels it, the next call raises ``TaskCancelled`` and the ledger records CANCELLED. The check reads
the worker's in-memory revoked set (free) and the ledger's cancel flag (one indexed read, at most once
per ``min_interval`` seconds per task), so the flag also reaches prefork children and workers started
after the cancel.
"""
from __future__ import annotations

import time

from apps.control.models import TaskRecord

_last_check: dict[str, float] = {}


class TaskCancelled(Exception):
    """Raised inside a task that an operator cancelled. Not retried (not a transient error)."""


def _current_task_id() -> str | None:
    from celery import current_task

    return current_task.request.id if current_task else None


def is_cancel_requested(task_id: str) -> bool:
    from celery.worker import state as worker_state

    if task_id in worker_state.revoked:
        return True
    return TaskRecord.objects.filter(task_id=task_id, cancel_requested_at__isnull=False).exists()


def raise_if_cancelled(task_id: str | None = None, min_interval: float = 1.0) -> None:
    task_id = task_id or _current_task_id()
    if not task_id:
        return
    now = time.monotonic()
    if now - _last_check.get(task_id, 0.0) < min_interval:
        return
    _last_check[task_id] = now
    if len(_last_check) > 10_000:
        _last_check.clear()
    if is_cancel_requested(task_id):
        raise TaskCancelled(f"task {task_id} was cancelled by an operator")
