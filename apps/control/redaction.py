"""Sensitive task arguments: tasks mark them, the ledger and the API show "[redacted]" instead.

Mark a task with options on its decorator (Celery turns them into task attributes):

    @shared_task(name="mail.send_login_link", sensitive_kwargs=("token",), sensitive_args=(1,))

The Celery event on the wire still carries Celery's own repr of the call; callers that must keep a
value out of RabbitMQ events and Flower too pass ``argsrepr=``/``kwargsrepr=`` to apply_async.
"""
from __future__ import annotations

import ast
import json
from typing import Any

REDACTED = "[redacted]"


def parse_repr(text: str | None) -> Any:
    """Celery sends args/kwargs as a Python repr (truncated past 1 KiB). Literals only; None if unparsable."""
    if text is None or text == "":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def json_safe(*values) -> bool:
    """Whether parsed call arguments can be stored as JSON. A repr Celery truncated ends in ``...``, which
    parses as Ellipsis; sets, bytes and complex numbers parse too, and none of them is JSON."""
    try:
        json.dumps(values, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


_imported = False


def task_registry():
    """Every task of the project, as a worker sees it (CELERY_IMPORTS + autodiscovered apps)."""
    global _imported
    from project.celery import app

    if not _imported:
        app.loader.import_default_modules()
        _imported = True
    return app.tasks


def sensitive_fields(task_name: str) -> tuple[set[int], set[str]]:
    task = task_registry().get(task_name)
    if task is None:
        return set(), set()
    return set(getattr(task, "sensitive_args", ()) or ()), set(getattr(task, "sensitive_kwargs", ()) or ())


def redact_call(task_name: str, args: Any, kwargs: Any, args_text: str, kwargs_text: str) -> tuple[str, str]:
    """Display strings for args and kwargs with the task's sensitive positions/names replaced."""
    positions, names = sensitive_fields(task_name)
    if not positions and not names:
        return args_text or "", kwargs_text or ""
    if isinstance(args, (list, tuple)):
        args_text = repr([REDACTED if i in positions else value for i, value in enumerate(args)])
    elif positions:
        args_text = REDACTED  # could not parse: hide it all rather than leak
    if isinstance(kwargs, dict):
        kwargs_text = repr({k: (REDACTED if k in names else v) for k, v in kwargs.items()})
    elif names:
        kwargs_text = REDACTED
    return args_text, kwargs_text
