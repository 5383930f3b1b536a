"""Progress reports from inside a task: a ``task-progress`` event the ledger and WebSockets pick up.

    from apps.control.progress import checkpoint
    checkpoint(self, step="parse", message="row 500 of 2000", current=500, total=2000)

Events go out on one connection per process, without publisher confirms (like every Celery event
here, apps/core/events.py) and without touching the task-publishing connection pool.
"""
from __future__ import annotations

import os
import logging
import threading

from apps.control.cancellation import raise_if_cancelled

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_dispatcher = None
_owner_pid = None


def _get_dispatcher(hostname: str | None):
    global _dispatcher, _owner_pid
    from project.celery import app

    if _dispatcher is None or _owner_pid != os.getpid():  # a forked child needs its own connection
        connection = app.connection_for_write()
        _dispatcher = app.events.Dispatcher(connection, hostname=hostname, enabled=True)
        _owner_pid = os.getpid()
    return _dispatcher


def report_progress(task, step: str = "", message: str = "", current: float | None = None,
                    total: float | None = None, task_id: str | None = None) -> None:
    """``task_id``: report for another task than the running one (a chunk reporting for its import)."""
    request = task.request
    # The name only when reporting for itself: a chunk's name is not the name of the import it reports for.
    fields = {"uuid": task_id or request.id, "name": task.name if task_id in (None, request.id) else None,
              "step": step, "message": message, "current": current, "total": total}
    with _lock:
        try:
            _get_dispatcher(request.hostname).send("task-progress", **fields)
        except Exception as exc:  # noqa: BLE001
            global _dispatcher
            _dispatcher = None  # reconnect next time; progress is best-effort, the task goes on
            logger.warning("progress event for %s not sent: %s", request.id, exc)


def checkpoint(task, step: str = "", message: str = "", current: float | None = None,
               total: float | None = None) -> None:
    """Report progress, then stop here if an operator cancelled the task."""
    report_progress(task, step, message, current, total)
    raise_if_cancelled(task.request.id)
