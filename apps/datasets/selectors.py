"""Reads: a dataset's progress as the admin, the API and the import command show it."""
from __future__ import annotations

from celery.result import AsyncResult

from apps.datasets.models import Dataset


def progress(dataset: Dataset) -> dict:
    return {
        "status": dataset.status,
        "stage": dataset.stage,
        "rows_processed": dataset.rows_processed,
        "rows_total": dataset.rows_total,
        "chunks_done": dataset.chunks_done,
        "chunks_total": dataset.chunks_total,
        "percent": dataset.progress_percent,
    }


def task_state(dataset: Dataset) -> dict:
    """The Celery state of the import's task id (PROGRESS with meta while chunks run)."""
    result = AsyncResult(dataset.task_id)
    info = result.info if isinstance(result.info, dict) else (str(result.info) if result.info else None)
    return {"task_id": dataset.task_id, "state": result.state, "info": info}


def error(dataset: Dataset) -> dict | None:
    if not dataset.error:
        return None
    return {"message": dataset.error, "row": dataset.error_row, "column": dataset.error_column or None}
