"""The dataset panel of a task's console page (apps/control/console/extensions.py): which import this
task is, its chunks, rows per second, and the profile once it is stored."""
from __future__ import annotations

from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from apps.datasets import selectors
from apps.datasets.models import Dataset, Status


def dataset_for(record) -> Dataset | None:
    """The import whose start or finishing task this is, or whose chunk it is (a chunk's root is the start task)."""
    ids = {i for i in (record.task_id, record.root_id) if i}
    return Dataset.objects.filter(Q(task_id__in=ids) | Q(start_task_id__in=ids)).first()


def rows_per_second(dataset: Dataset) -> float | None:
    if not dataset.started_at or not dataset.rows_processed:
        return None
    seconds = ((dataset.finished_at or timezone.now()) - dataset.started_at).total_seconds()
    return round(dataset.rows_processed / seconds, 1) if seconds > 0 else None


def task_panel(record) -> dict | None:
    dataset = dataset_for(record)
    if dataset is None:
        return None
    progress = selectors.progress(dataset)
    rate = rows_per_second(dataset)
    rows = [
        ("dataset", f"{dataset.name} v{dataset.version}"),
        ("file", dataset.source_path),
        ("status", f"{dataset.status} ({dataset.stage})"),
        ("chunks", f"{progress['chunks_done']} of {progress['chunks_total']} done"),
        ("rows", f"{progress['rows_processed']:,} of {progress['rows_total']:,}" if progress["rows_total"]
         else f"{progress['rows_processed']:,}"),
        ("rows/s", f"{rate:,.1f} (rows processed / time since the import started)" if rate else "-"),
    ]
    if dataset.error:
        rows.append(("error", dataset.error))
    links = [("admin", reverse("admin:datasets_dataset_change", args=[dataset.pk]))]
    if dataset.status == Status.READY:
        links = [("profile", reverse("admin:datasets_dataset_change", args=[dataset.pk])),
                 ("profile (API)", reverse("dataset-profile", args=[dataset.pk]))]
    return {"title": "Dataset", "heading": f"import of {dataset.name} v{dataset.version}", "rows": rows, "links": links}
