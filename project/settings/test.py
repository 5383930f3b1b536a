"""Test settings: a real broker (an isolated vhost per test session) and a real database.

The test database is a file (SQLite) or a test database (PostgreSQL) that the worker processes the tests
start can open too, so tests see what real workers wrote.
"""
import hashlib

from .base import *  # noqa: F401,F403
from .base import BASE_DIR, DATABASES, VAR_DIR, os, topology

SECRET_KEY = "test-only-not-secret"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast user creation in tests

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not pytest-django's default in-memory database: worker processes must open it too.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("TEST_SQLITE_PATH", str(VAR_DIR / "test.sqlite3"))}
else:
    # One test database per checkout, so two checkouts on one machine can run their suites at once.
    _checkout = hashlib.sha1(str(BASE_DIR).encode()).hexdigest()[:6]
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{_checkout}"}

# Tasks used only by the tests (crash, sleep, echo): registered in workers started by the tests.
CELERY_IMPORTS = ["tests.support.tasks", "tests.support.tracing_tasks", "tests.support.control_tasks",
                  "tests.support.mail_tasks"]
TRACING_ENABLED = os.environ.get("TRACING_ENABLED", "0") == "1"  # off: spans of other tests would load ops_trace
CELERY_TASK_ROUTES = {
    "tests.cpu.*": topology.route(topology.DATASET),
    "tests.io.*": topology.route(topology.OPS_TRACE),
    **CELERY_TASK_ROUTES,  # noqa: F405
}
# Workers the tests start wait this long for running tasks at SIGTERM, not their role's production window
# (minutes): tests that stop a busy worker would otherwise wait it out. Shutdown tests set their own.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = float(os.environ.get("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 5))
# Static files straight from the apps (no collectstatic run before the tests), as DEBUG does locally:
# the browser tests load the console's scripts and styles from the web process.
WHITENOISE_USE_FINDERS = True
