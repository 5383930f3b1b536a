"""The Celery app, configured from Django settings (the CELERY_* block in project/settings/base.py)."""
import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

def _celery_settings() -> dict:
    """The CELERY_* settings as a plain dict, read once.

    Celery looks its settings up several times per published message, and through Django's lazy
    settings object every lookup of a name that is not set (most of them: Celery tries each name under
    its new and old spelling before its default) raises and catches an AttributeError. A dict answers
    at once: a fifth of the bulk-enqueue time in the profile (docs/benchmarks.md).
    """
    from django.conf import settings

    return {name: getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")}


app = Celery(
    "project",
    amqp="apps.core.amqp:PlatformAMQP",  # delayed delivery for direct exchanges, message-size guard
    task_cls="apps.core.tasks:PlatformTask",  # bounded retries, eventlet time limits
    events="apps.core.events:PlatformEvents",  # monitoring events without confirms (eventlet deadlock)
)
app.config_from_object(_celery_settings(), namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs):
    """Let Django's LOGGING configure worker and beat logging instead of Celery's own."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
