"""What domain apps add to a task's console page, without the control app importing them.

A domain app registers, in its AppConfig.ready, a function that takes a TaskRecord and returns None
(nothing to add) or a dict the task page shows as a panel:

    {"title": "Dataset", "heading": "import of sales v3",   # heading: optional, shown beside the task name
     "rows": [("status", "RUNNING"), ...], "links": [("profile", "/admin/...")]}

apps/datasets registers the import's dataset, chunks, rows/s and profile link; apps/tracing the trace.
"""
from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger(__name__)

_panels: list[Callable] = []


def register_task_panel(build: Callable) -> None:
    if build not in _panels:
        _panels.append(build)


def task_panels(record) -> list[dict]:
    panels = []
    for build in _panels:
        try:
            found = build(record)
        except Exception as exc:  # noqa: BLE001  (an extension must not take the task page down)
            logger.warning("task panel %s failed for %s: %r", build.__name__, record.task_id, exc)
            found = {"title": build.__name__, "rows": [("unavailable", str(exc))]}
        if found:
            panels.append(found)
    return panels
