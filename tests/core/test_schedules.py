"""Schedules live in the database: seeded idempotently, admin edits survive, edits take effect live."""
import json

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from apps.core.schedules import default_schedules, seed_schedules
from tests.support.workers import ProcessRole, wait_for


@pytest.mark.django_db
def test_seeding_twice_changes_nothing_and_keeps_admin_edits():
    assert seed_schedules() == [d.name for d in default_schedules()]
    cleanup = PeriodicTask.objects.get(name="Result cleanup")
    cleanup.enabled = False
    cleanup.crontab.hour = "5"
    cleanup.crontab.save()
    cleanup.save()
    snapshot = list(PeriodicTask.objects.order_by("name").values())

    assert seed_schedules() == []
    assert list(PeriodicTask.objects.order_by("name").values()) == snapshot
    assert PeriodicTask.objects.get(name="Result cleanup").crontab.hour == "5"


@pytest.mark.django_db(transaction=True)
def test_a_schedule_edited_in_the_database_fires_without_restarting_beat(io_worker, broker_url, worker_db_url, effects, tmp_path):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    task = PeriodicTask.objects.create(name="test heartbeat", task="tests.io.mark", interval=every_second,
                                       kwargs=json.dumps({"path": effects.path, "text": "before"}))
    beat = ProcessRole("beat", broker_url, worker_db_url).start()
    try:
        wait_for(lambda: effects.count("before") >= 2, timeout=60, message="the schedule to fire twice")
        # An admin edit: new arguments, saved through the ORM as the admin does.
        task.kwargs = json.dumps({"path": effects.path, "text": "after"})
        task.save()
        wait_for(lambda: effects.count("after") >= 1, timeout=60, message="the edited schedule to fire")
        assert beat.alive()
        # And the built-in default entry was not re-created behind the seed's back.
        assert not PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
    finally:
        beat.stop()
