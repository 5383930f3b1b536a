"""Tracing tasks (queue ops_trace, eventlet io worker): thin adapters over services.py.

``tracing.ingest`` and ``tracing.export_pending`` are never traced themselves (see apps/tracing/otel.py).
"""
from __future__ import annotations

from celery import shared_task
from django.db import transaction

from apps.core.tasks import where_am_i
from apps.tracing import conf, services


@shared_task(name="tracing.probe")
def probe() -> dict:
    """A no-op on the ops_trace lane (eventlet): reports where it ran."""
    return where_am_i()


_export_in_flight = {"value": False}  # per process: at most one triggered export queued at a time


@shared_task(name="tracing.ingest", soft_time_limit=60, time_limit=90, track_started=False)
def ingest(records: list | str, batch_id: str = "") -> dict:
    """Store a batch of event records (a list, or its JSON text as the buffer sends it); then, if a collector is
    configured and up, start an export."""
    result = services.ingest_batch(records, batch_id)
    if result["export"] == "pending" and result["stored"] and not _export_in_flight["value"] \
            and services.collector_backoff_remaining() == 0:
        _export_in_flight["value"] = True
        transaction.on_commit(_trigger_export)
    return result


def _trigger_export() -> None:
    try:
        export_pending.apply_async(kwargs={"triggered": True})
    except Exception:
        _export_in_flight["value"] = False  # the periodic schedule still exports; the next ingest retries
        raise


@shared_task(name="tracing.export_pending", soft_time_limit=120, time_limit=150)
def export_pending(triggered: bool = False) -> dict:
    """Export pending events to the OTLP collector. A collector outage is recorded on the rows and in the
    result, not raised: the periodic schedule (and the next ingestion) is the retry loop, so a long outage
    never piles retries onto the queue."""
    if triggered:
        _export_in_flight["value"] = False
    return services.export_pending(budget=conf.get("TRACING_EXPORT_BUDGET"))


@shared_task(name="tracing.purge_old_events", soft_time_limit=240, time_limit=270)
def purge_old_events(max_age_days: float | None = None) -> dict:
    """Retention: delete events older than TRACING_RETENTION_DAYS (or ``max_age_days``), in bounded batches."""
    return services.purge_old_events(max_age_days=max_age_days)
