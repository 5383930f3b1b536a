"""The Celery app, configured from Django settings (the CELERY_* block in project/settings/base.py)."""
import os

from celery import Celery
from celery.app.defaults import SETTING_KEYS
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")


def celery_name(django_name: str) -> str:
    """The name Celery 5+ gives a CELERY_* setting: CELERY_RESULT_EXTENDED -> result_extended.

    Celery treats a dict of CELERY_* names as old-style settings even under namespace="CELERY" and warned
    once per name at every worker start ("The 'CELERY_RESULT_EXTENDED' setting is deprecated ..."; it
    spares only the literal source "django.conf:settings"). A name Celery does not define keeps its Django
    spelling: the Django fixup reads CELERY_DB_REUSE_MAX under that name.
    """
    name = django_name.removeprefix("CELERY_").lower()
    return name if name in SETTING_KEYS else django_name


def celery_settings() -> dict:
    """The CELERY_* settings as a plain dict under Celery's own names, read once.

    Celery looks its settings up several times per published message, and through Django's lazy
    settings object every lookup of a name that is not set (most of them: Celery tries each name under
    its new and old spelling before its default) raises and catches an AttributeError. A dict answers
    at once: a fifth of the bulk-enqueue time in the profile (docs/benchmarks.md). ``follow_settings``
    keeps it in step with override_settings in tests.
    """
    from django.conf import settings

    return {celery_name(name): getattr(settings, name) for name in dir(settings) if name.startswith("CELERY_")}


app = Celery(
    "project",
    amqp="apps.core.amqp:PlatformAMQP",  # delayed delivery for direct exchanges, message-size guard
    task_cls="apps.core.tasks:PlatformTask",  # bounded retries, time limits on the io pools
    events="apps.core.events:PlatformEvents",  # monitoring events without confirms (eventlet deadlock)
)
_conf = celery_settings()
app.config_from_object(_conf)
app.autodiscover_tasks()


def follow_settings(setting: str, value, enter: bool, **kwargs) -> None:
    """Django's setting_changed (override_settings, settings fixtures): a CELERY_* change reaches app.conf.

    The dict above is Celery's configuration source, so a change there is what Celery reads next; an
    explicit ``app.conf[...] =`` of the same name would shadow it, so that is dropped. Values Celery builds
    once per process (its queues, its result backend) are not rebuilt: set those in the worker's
    environment instead.
    """
    if not setting.startswith("CELERY_"):
        return
    from django.conf import settings

    name = celery_name(setting)
    if hasattr(settings, setting):
        _conf[name] = getattr(settings, setting)
    else:
        _conf.pop(name, None)
    if app.configured:
        app.conf.changes.pop(name, None)


def _connect_follow_settings() -> None:
    from django.core.signals import setting_changed

    setting_changed.connect(follow_settings, weak=False, dispatch_uid="project.celery.follow_settings")


_connect_follow_settings()


@setup_logging.connect
def use_django_logging(**kwargs):
    """Let Django's LOGGING configure worker and beat logging instead of Celery's own."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
