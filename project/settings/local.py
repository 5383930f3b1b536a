"""Local development: the run command's settings. Never used in production (production.py is)."""
import hashlib
import re

from .base import *  # noqa: F401,F403
from .base import BASE_DIR, env_bool, os

DEBUG = env_bool("DJANGO_DEBUG", True)
# A fixed, clearly-local key: local data is disposable, and production.py refuses to start without its own.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "local-development-only-not-secret")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", 1025))  # the run command's SMTP sink


def checkout_vhost() -> str:
    """A RabbitMQ vhost of this checkout's own: two checkouts' stacks on one broker never take each other's
    tasks or events. bin/run creates it (`manage.py local_vhost`)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", BASE_DIR.name)
    return f"platform-{name}-{hashlib.sha1(str(BASE_DIR).encode()).hexdigest()[:6]}"


CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{checkout_vhost()}")
