from django.apps import AppConfig


class ControlConfig(AppConfig):
    name = "apps.control"
    verbose_name = "Task control plane"

    def ready(self):
        # Imported here, not at the top: Django loads apps.py before any model, and these import models.
        from apps.control.worker import ApplyControlState
        from apps.core import schedules
        from project.celery import app

        # Every worker's consumer re-applies paused queues and pending cancellations when it starts.
        app.steps["consumer"].add(ApplyControlState)
        schedules.register(
            schedules.DefaultSchedule(
                name="Mark lost tasks",
                task="control.sweep_lost",
                every_seconds=60,
                description="Marks LOST the tasks no worker and no queue holds any more (apps/control/services.py).",
            ),
            schedules.DefaultSchedule(
                name="Take in dead letters",
                task="control.drain_dead_letters",
                every_seconds=30,
                description="Moves <queue>.dead messages into the dead-letter store (browse/replay/purge).",
            ),
        )
