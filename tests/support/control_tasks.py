"""Test-only tasks for the control plane: progress with cooperative cancellation, a self-rejecting task."""
from __future__ import annotations

import os
import time

from celery import shared_task
from celery.exceptions import Reject

from apps.control.progress import checkpoint
from tests.support.tasks import mark


def _steps(task, steps: int, delay: float, path: str | None):
    if path:
        mark(path, "start")
    for i in range(steps):
        checkpoint(task, step=f"step {i + 1}", message=f"{i + 1} of {steps}", current=i + 1, total=steps)
        time.sleep(delay)
    if path:
        mark(path, "end")
    return steps


@shared_task(name="tests.cpu.steps", bind=True)
def cpu_steps(self, steps: int, delay: float = 0.2, path: str | None = None):
    return _steps(self, steps, delay, path)


@shared_task(name="tests.io.steps", bind=True)
def io_steps(self, steps: int, delay: float = 0.2, path: str | None = None):
    return _steps(self, steps, delay, path)


@shared_task(name="tests.io.reject_unless", bind=True)
def io_reject_unless(self, flag_path: str, path: str):
    """Dead-letters its own message (Reject, no requeue) until ``flag_path`` exists, then runs."""
    if not os.path.exists(flag_path):
        mark(path, "rejected")
        raise Reject("flag missing", requeue=False)
    mark(path, "ran")
    return "ran"


@shared_task(name="tests.io.secret", sensitive_kwargs=("password",), sensitive_args=(1,))
def io_secret(user: str, token: str, password: str = ""):
    return user
