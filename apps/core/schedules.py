"""Default periodic tasks, seeded into django-celery-beat's tables.

Seeding is idempotent and never overwrites: a row that exists (by name) is left exactly as an admin
left it, so running the seed on every deploy is safe. Apps add their defaults to DEFAULT_SCHEDULES.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask


@dataclass(frozen=True)
class DefaultSchedule:
    name: str
    task: str
    crontab: dict | None = None  # CrontabSchedule fields, e.g. {"minute": "0", "hour": "4"}
    every_seconds: int | None = None
    kwargs: dict = field(default_factory=dict)
    description: str = ""


DEFAULT_SCHEDULES: list[DefaultSchedule] = [
    DefaultSchedule(
        name="Result cleanup",
        task="celery.backend_cleanup",
        crontab={"minute": "0", "hour": "4"},
        description="Deletes task results older than CELERY_RESULT_EXPIRES.",
    ),
    DefaultSchedule(
        name="Trace retention",
        task="tracing.purge_old_events",
        crontab={"minute": "30", "hour": "*"},
        description="Deletes trace events stored longer ago than TRACING_RETENTION_DAYS, in bounded batches.",
    ),
    DefaultSchedule(
        name="Trace export",
        task="tracing.export_pending",
        every_seconds=15,
        description="Exports trace events still pending to the OTLP collector (catch-up after an outage).",
    ),
]


def _schedule_fields(default: DefaultSchedule) -> dict:
    if default.crontab is not None:
        crontab, _ = CrontabSchedule.objects.get_or_create(
            **{"minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
               **default.crontab, "timezone": "UTC"}
        )
        return {"crontab": crontab}
    interval, _ = IntervalSchedule.objects.get_or_create(every=default.every_seconds, period=IntervalSchedule.SECONDS)
    return {"interval": interval}


@transaction.atomic
def seed_schedules(defaults: list[DefaultSchedule] | None = None) -> list[str]:
    """Create the default periodic tasks that do not exist yet; return the names created."""
    created = []
    for default in DEFAULT_SCHEDULES if defaults is None else defaults:
        if PeriodicTask.objects.filter(name=default.name).exists():
            continue
        PeriodicTask.objects.create(
            name=default.name,
            task=default.task,
            kwargs=json.dumps(default.kwargs),
            description=default.description,
            **_schedule_fields(default),
        )
        created.append(default.name)
    return created

# --- control ---
DEFAULT_SCHEDULES += [
    DefaultSchedule(
        name="Mark lost tasks",
        task="control.sweep_lost",
        every_seconds=60,
        description="Marks LOST the tasks no worker and no queue holds any more (apps/control/services.py).",
    ),
    DefaultSchedule(
        name="Take in dead letters",
        task="control.drain_dead_letters",
        every_seconds=30,
        description="Moves <queue>.dead messages into the dead-letter store (browse/replay/purge).",
    ),
]
DEFAULT_SCHEDULES.append(
    DefaultSchedule(
        name="Mail: re-enqueue stale messages",
        task="mail.requeue_stale",
        every_seconds=60,
        description="Re-enqueues outbox messages whose task was lost or whose worker died mid-send (apps/mail).",
    )
)
DEFAULT_SCHEDULES.append(
    DefaultSchedule(
        name="Datasets: recover stuck imports",
        task="datasets.recover_stuck",
        every_seconds=60,
        description="Re-publishes imports no worker took, fails those whose worker vanished (apps/datasets).",
    )
)
