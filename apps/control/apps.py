from django.apps import AppConfig


class ControlConfig(AppConfig):
    name = "apps.control"
    verbose_name = "Task control plane"

    def ready(self):
        from apps.control.worker import ApplyControlState
        from project.celery import app

        # Every worker's consumer re-applies paused queues and pending cancellations when it starts.
        app.steps["consumer"].add(ApplyControlState)
