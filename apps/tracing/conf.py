"""Tracing settings with their defaults (project/settings/base.py, `# --- tracing ---`, sets them from the env)."""
from __future__ import annotations

from django.conf import settings

DEFAULTS = {
    "TRACING_ENABLED": True,  # record spans and audit events in this process
    "TRACING_SERVICE_NAME": "task-platform",  # OpenTelemetry service.name
    "TRACING_OTLP_ENDPOINT": "",  # OTLP/HTTP traces URL (…/v1/traces); empty: nothing is exported
    "TRACING_OTLP_TIMEOUT": 3.0,  # seconds per export request: an outage costs at most this per attempt
    "TRACING_EXPORT_BATCH": 512,  # spans per OTLP request
    "TRACING_EXPORT_BUDGET": 20.0,  # seconds one export task may spend before leaving the rest to the next
    "TRACING_EXPORT_BACKOFF_MAX": 60.0,  # seconds; after a failed export, triggered exports wait this long at most
    "TRACING_BUFFER_MAX_EVENTS": 20_000,  # caller-side buffer bound; beyond it new events are dropped and counted
    # Batches of 2,000: the io worker drained 500-event batches at ~4,300 events/s and 2,000-event batches at
    # ~10,000 events/s (per-task overhead; docs/tracing.md, benchmark).
    "TRACING_FLUSH_EVENTS": 2000,  # a batch leaves the buffer at this many events …
    "TRACING_FLUSH_BYTES": 2 * 1024 * 1024,  # … or about this many bytes of JSON (half the 4 MiB message guard)
    "TRACING_FLUSH_INTERVAL": 1.0,  # … or after this many seconds
    "TRACING_MAX_ATTRIBUTES": 128,  # per event; extra attributes are dropped (noted in the event's issues)
    "TRACING_MAX_ATTRIBUTE_LENGTH": 4096,  # characters per string attribute value; longer ones are truncated
    "TRACING_MAX_ATTRIBUTES_BYTES": 64 * 1024,  # JSON size of all attributes of one event
    "TRACING_MAX_FUTURE_SKEW": 300,  # seconds; a start time later than now + this is clamped to now
    "TRACING_MAX_PAST_AGE": 7 * 24 * 3600,  # seconds; a start time older than now - this is clamped to now
    "TRACING_RETENTION_DAYS": 14,  # the purge task deletes events stored longer ago than this
    "TRACING_PURGE_BATCH": 5000,  # rows per delete statement (bounded locks, bounded transactions)
    "TRACING_UNTRACED_TASKS": ("tracing.ingest", "tracing.export_pending"),  # no spans: they would feed themselves
}


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])
