"""The trace link of a task's console page (apps/control/console/extensions.py): the trace that holds
the task's run span (the Celery instrumentation sets ``messaging.message.id`` to the task id)."""
from __future__ import annotations

from datetime import timedelta

from django.urls import reverse

from apps.tracing.models import TraceEvent

TASK_ID_ATTRIBUTE = "messaging.message.id"


def task_panel(record) -> dict | None:
    if not record.sent_at:
        return None
    # Bounded by time (start_time is indexed): a task's spans start between its publish and its end.
    spans = TraceEvent.objects.filter(start_time__gte=record.sent_at - timedelta(minutes=1),
                                      **{f"attributes__{TASK_ID_ATTRIBUTE}": record.task_id})
    if record.finished_at:
        spans = spans.filter(start_time__lte=record.finished_at + timedelta(minutes=1))
    trace_id = spans.values_list("trace_id", flat=True).first()
    if not trace_id:
        return None
    return {"title": "Trace", "rows": [("trace id", trace_id)],
            "links": [("trace", reverse("tracing:trace", args=[trace_id]))]}
