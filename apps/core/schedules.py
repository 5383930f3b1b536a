"""Default periodic tasks, seeded into django-celery-beat's tables.

Seeding is idempotent and never overwrites: a row that exists (by name) is left exactly as an admin
left it, so running the seed on every deploy is safe. Core registers Celery's own result cleanup; each app
registers its defaults from its AppConfig.ready() with ``register`` (core names no app's task).
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


_REGISTERED: dict[str, DefaultSchedule] = {}


def register(*defaults: DefaultSchedule) -> None:
    """Add default schedules; called by each app from its AppConfig.ready(), so core names no app's task.

    Registering the same schedule twice is harmless (ready() may run again); two different schedules under
    one name are a mistake the seed could not resolve, so they raise.
    """
    for default in defaults:
        known = _REGISTERED.get(default.name)
        if known is not None and known != default:
            raise ValueError(f"two default schedules named {default.name!r}: {known} and {default}")
        _REGISTERED[default.name] = default


def default_schedules() -> list[DefaultSchedule]:
    """Every registered default, in registration order (core's first, then the apps' in INSTALLED_APPS order)."""
    return list(_REGISTERED.values())


register(DefaultSchedule(
    name="Result cleanup",
    task="celery.backend_cleanup",
    crontab={"minute": "0", "hour": "4"},
    description="Deletes task results older than CELERY_RESULT_EXPIRES.",
))


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
    for default in default_schedules() if defaults is None else defaults:
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
