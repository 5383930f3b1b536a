"""Local development: the run command's settings. Never used in production (production.py is)."""
from .base import *  # noqa: F401,F403
from .base import env_bool, os

DEBUG = env_bool("DJANGO_DEBUG", True)
# A fixed, clearly-local key: local data is disposable, and production.py refuses to start without its own.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "local-development-only-not-secret")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", 1025))  # the run command's SMTP sink
