"""The Celery app, configured from Django settings (the CELERY_* block in project/settings/base.py)."""
import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

app = Celery(
    "project",
    amqp="apps.core.amqp:PlatformAMQP",  # delayed delivery for direct exchanges, message-size guard
    task_cls="apps.core.tasks:PlatformTask",  # bounded retries, eventlet time limits
    events="apps.core.events:PlatformEvents",  # monitoring events without confirms (eventlet deadlock)
)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs):
    """Let Django's LOGGING configure worker and beat logging instead of Celery's own."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
