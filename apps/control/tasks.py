"""Housekeeping run by beat (seeded in apps/core/schedules.py): LOST sweep and dead-letter intake."""
from celery import shared_task

from apps.control import services


@shared_task(name="control.sweep_lost")
def sweep_lost() -> int:
    return len(services.sweep_lost())


@shared_task(name="control.drain_dead_letters")
def drain_dead_letters() -> int:
    return services.refresh_dead_letters()
