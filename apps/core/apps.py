from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    verbose_name = "Platform core"

    def ready(self):
        from apps.core import signals  # noqa: F401  (connects post_migrate)
        from apps.core.workers import AnnounceWorker
        from project.celery import app

        # Every worker announces its pool, queues and deployment: fast status and foreign-worker checks.
        app.steps["consumer"].add(AnnounceWorker)
