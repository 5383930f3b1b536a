"""Settings for bench/post_office_peer.py only: the test settings plus django-post-office, sending through
Django's SMTP backend to the bench's SMTP server (EMAIL_HOST/EMAIL_PORT from the environment)."""
import os

from project.settings.test import *  # noqa: F403
from project.settings.test import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "post_office"]
EMAIL_HOST = os.environ["EMAIL_HOST"]
EMAIL_PORT = int(os.environ["EMAIL_PORT"])
EMAIL_USE_TLS = EMAIL_USE_SSL = False
POST_OFFICE = {
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    "THREADS_PER_PROCESS": int(os.environ.get("POST_OFFICE_THREADS", 5)),  # its default
    "BATCH_SIZE": int(os.environ.get("POST_OFFICE_BATCH_SIZE", 100)),  # its default
    "LOG_LEVEL": 1,  # errors only: the default logs a row per email sent
}
