"""Settings shared by every environment. Environment modules (local, test, production) only override.

Everything is read from the environment with a safe default for local development; production.py
refuses to start without the values that must never have a default (secret key, passwords).
"""
from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from project import topology

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("PLATFORM_VAR_DIR", BASE_DIR / "var"))  # SQLite file, uploads, local secrets


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# --- Django ------------------------------------------------------------------------------------------
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")  # environment modules decide whether a default is allowed
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc as static files: the API docs work offline
    "django_celery_results",
    "django_celery_beat",
    "apps.core",
    "apps.datasets",
    "apps.mail",
    "apps.tracing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_config(url: str) -> dict:
    """One database from a URL, tuned for the platform's concurrent writers."""
    # Persistent connections where a thread serves one request or task at a time and says so
    # (compose/start/cpu, and compose/start/web: one per thread of its HTTP pool, project/asgi.py); 0
    # elsewhere: the io role's green or OS threads would each keep one open (compose/start/io sets 0).
    config = dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0), conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["OPTIONS"] = {
            # Web, two workers and beat write concurrently. WAL (set once on the file after migrate, see
            # apps/core/signals.py) lets readers run beside the writer; IMMEDIATE takes the write lock
            # when a transaction begins (no lock-upgrade deadlock that SQLite answers with an instant
            # "database is locked"), and the timeout makes writers queue.
            # journal_mode is deliberately not in init_command: switching it on every new connection
            # hung the eventlet worker while another worker's connection was open (seen here).
            "init_command": "PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    pool_max_size = env_int("DATABASE_POOL_MAX_SIZE", 0)
    if pool_max_size and config["ENGINE"] == "django.db.backends.postgresql":
        # Set by compose/start/io: Django opens one connection per thread (green or OS), so -c 500 would be
        # 500 PostgreSQL connections. A bounded pool (Django 5.2 native, psycopg_pool; needs CONN_MAX_AGE=0,
        # which the io role sets) caps them per process; tasks give the connection back before any SMTP
        # conversation (apps/mail/services.py).
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": pool_max_size,
            # Seconds a thread waits for a connection before PoolTimeout (an OperationalError: the task or
            # result write is retried). Short on purpose: after PostgreSQL terminated the pool's connections,
            # a waiter was sometimes never served until its timeout (seen here, eventlet + psycopg_pool:
            # 60 s stalls with 60; with 10 the write retries and goes through).
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
        }
    return config


if "DATABASE_URL" not in os.environ:
    # The default SQLite file lives in var/: create it here, so `manage.py migrate` works in a fresh checkout.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": database_config(os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.core.authentication.CachedTokenAuthentication",  # DRF's, a lookup kept API_TOKEN_CACHE_SECONDS
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
API_TOKEN_CACHE_SECONDS = float(os.environ.get("API_TOKEN_CACHE_SECONDS", 5))  # a revoked token works <= this long elsewhere
SPECTACULAR_SETTINGS = {
    "TITLE": "Task platform API", "VERSION": "1.0.0", "SERVE_INCLUDE_SCHEMA": False,
    # From our own static files (drf-spectacular-sidecar), not a CDN: the docs page must load offline.
    # (No ReDoc page: its template also loads Google fonts.)
    "SWAGGER_UI_DIST": "SIDECAR", "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Celery ------------------------------------------------------------------------------------------
# The one place Celery behaviour is configured. Start scripts only place workers (-P -c -Q -n); every
# reliability and monitoring switch is here so environments cannot drift. See docs/architecture.md.

# Broker: the local RabbitMQ unless told otherwise. There is no eager fallback: without a reachable
# broker, publishing raises instead of running the task inside the caller.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def spread_nodes(url: str) -> str:
    """A node list ("amqp://a;amqp://b;amqp://c", one RabbitMQ cluster) in a random order per process.
    kombu always connects to the first URL of the list first, whatever the failover strategy (the
    strategy only picks the next node after a failure, kombu/connection.py), so without this every
    client would start on node a."""
    import random

    nodes = [node.strip() for node in url.split(";") if node.strip()]
    random.shuffle(nodes)
    return ";".join(nodes)


if ";" in CELERY_BROKER_URL:
    # Celery reads broker_url from the CELERY_BROKER_URL environment variable before settings (its
    # Settings.broker_url property), so the shuffled list goes into the read and write URLs, which Celery's
    # consumers and producers (and apps/core/cluster.connection) use. A single node leaves them unset.
    CELERY_BROKER_READ_URL = CELERY_BROKER_WRITE_URL = spread_nodes(CELERY_BROKER_URL)
# After a node is lost, try the others in turn (round-robin over the shuffled list visits each node once
# per round; kombu's "shuffle" picks at random and can retry the dead node).
CELERY_BROKER_FAILOVER_STRATEGY = "round-robin"
PLATFORM_BROKER_MANAGEMENT_PORT = env_int("PLATFORM_BROKER_MANAGEMENT_PORT", 15672)  # HTTP API: queue leaders
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # workers wait for RabbitMQ instead of exiting
CELERY_BROKER_CONNECTION_TIMEOUT = 4  # seconds; a down broker is reported quickly, not after a hang
# A channel error while the consumer (re)connects restarts the consumer instead of ending the worker. On a
# cluster a quorum queue's declare or consume can fail with a channel error while its leader is elected
# (404 "failed to perform operation on queue ... due to timeout"); Celery's default treats that as
# "Unrecoverable error" and the worker exits (the likely way a fresh-clone CI run lost a worker during its
# rolling-restart case). A lasting one (406 inequivalent arg) is then logged at each retry, the worker stays up.
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "confirm_publish": True,  # publisher confirms: apply_async returns only once RabbitMQ has the message
    "confirm_timeout": 10,  # seconds to wait for that confirm before raising to the caller
}
CELERY_BROKER_HEARTBEAT = env_int("CELERY_BROKER_HEARTBEAT", 30)  # seconds; dead TCP connections found in ~1 min

# Serialization: JSON only. Pickle would let anyone who can publish run code in a worker.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"

# Topology (project/topology.py): declared queues only; a typo in a route must fail, not create a queue.
CELERY_TASK_QUEUES = topology.work_queues()
CELERY_TASK_CREATE_MISSING_QUEUES = False
CELERY_TASK_DEFAULT_QUEUE = topology.OPS_TRACE
CELERY_TASK_DEFAULT_EXCHANGE = topology.OPS_TRACE
CELERY_TASK_DEFAULT_ROUTING_KEY = topology.OPS_TRACE
CELERY_TASK_DEFAULT_DELIVERY_MODE = "persistent"  # messages survive a broker restart
# Routes by task-name glob; tasks carry no queue= in their decorators. Order matters: first match wins.
CELERY_TASK_ROUTES = {
    "datasets.*": topology.route(topology.DATASET),
    "mail.bulk_*": topology.route(topology.MAIL_BULK),
    "mail.*": topology.route(topology.MAIL),
    "tracing.*": topology.route(topology.OPS_TRACE),
    "core.*": topology.route(topology.OPS_TRACE),
    "control.*": topology.route(topology.OPS_TRACE),  # control plane housekeeping (apps/control)
    "celery.*": topology.route(topology.OPS_TRACE),  # Celery's own housekeeping (backend_cleanup)
}

# Delivery guarantees: ack after the task ran, so a crash redelivers it; a child killed mid-task
# (OOM, kill -9, hard time limit) requeues it, and the quorum queue's delivery limit stops a poison loop.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True  # a task that raised is recorded as FAILURE, not retried forever
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # prefork: one reserved task per child, no hoarding of long jobs
CELERY_WORKER_DETECT_QUORUM_QUEUES = True  # per-consumer QoS (quorum queues refuse global QoS)
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True  # they will be redelivered anyway
CELERY_WORKER_CONSUMER = "apps.core.consumer:PlatformConsumer"  # bad messages are dead-lettered, not acked
CELERY_WORKER_POOL_RESTARTS = True  # lets the pool-restart control action work (prefork)
# Recycle prefork children to cap leaks: by memory first (below), by count as a backstop. Every 1,000 was
# 13% of the no-op drain rate (a fork each second per child at 1,000 tasks/s; docs/benchmarks.md).
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("CELERY_WORKER_MAX_TASKS_PER_CHILD", 10_000)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", 1_000_000)  # KiB
PLATFORM_MAX_MESSAGE_BYTES = env_int("PLATFORM_MAX_MESSAGE_BYTES", 4 * 1024 * 1024)  # enforced both ends

# Time limits: every task has one. Tasks override per task; the io role's pools (eventlet, threads) enforce
# them through the base task (Celery enforces them only on prefork). Soft raises inside the task, hard ends it.
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 330)
# Graceful shutdown: the worker start scripts set REMAP_SIGTERM=SIGQUIT, so SIGTERM (docker stop, Kubernetes)
# starts Celery's cold shutdown, which first gives running tasks this many seconds (soft shutdown) and then
# cancels the rest (requeued: acks_late). Per role, from project/topology.py ROLES (PLATFORM_WORKER_ROLE).
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = float(os.environ.get("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT")
                                            or topology.soft_shutdown_seconds(os.environ.get("PLATFORM_WORKER_ROLE", "")))
# Probe files for Kubernetes (apps/core/probes.py): written only where PLATFORM_PROBE_DIR is set.
PLATFORM_PROBE_DIR = os.environ.get("PLATFORM_PROBE_DIR", "")
PLATFORM_HEARTBEAT_SECONDS = float(os.environ.get("PLATFORM_HEARTBEAT_SECONDS", 10))  # heartbeat file touch interval

# Retries (used by apps.core.tasks.PlatformTask): bounded, exponential with jitter, transient errors only.
PLATFORM_TASK_MAX_RETRIES = env_int("PLATFORM_TASK_MAX_RETRIES", 5)
PLATFORM_TASK_RETRY_BACKOFF_MAX = env_int("PLATFORM_TASK_RETRY_BACKOFF_MAX", 600)  # seconds

# Results: in the database, with the task name, args, worker and queue (extended), kept for a week.
# django-celery-results' "django-db" backend, with database errors retried (apps/core/results.py): a
# dropped connection while storing STARTED would otherwise lose the task.
CELERY_RESULT_BACKEND = "apps.core.results:PlatformDatabaseBackend"
CELERY_RESULT_BACKEND_ALWAYS_RETRY = True
CELERY_RESULT_BACKEND_MAX_RETRIES = 10  # with backoff from 10 ms up to 10 s between attempts
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 7 * 24 * 3600)  # seconds; celery.backend_cleanup
CELERY_TASK_TRACK_STARTED = True  # STARTED is stored, so "running" is distinguishable from "waiting"
# Celery closes the database connections before and after every task unless this is set. Where they are
# meant to persist (CONN_MAX_AGE > 0: the prefork lane), apps.core.signals closes them by Django's rules
# (age, health checks) and Celery only every 1,000 tasks: a new PostgreSQL connection per task was most of
# a result-storing task's cost (docs/benchmarks.md).
CELERY_DB_REUSE_MAX = 1000 if DATABASES["default"]["CONN_MAX_AGE"] else None

# Schedules: in the database, edited in the admin, seeded by `manage.py seed_schedules`.
# No CELERY_BEAT_SCHEDULE: it would overwrite admin edits whenever beat starts.
CELERY_BEAT_SCHEDULER = "apps.core.beat:PlatformScheduler"  # DatabaseScheduler, one leader, keeps admin edits
CELERY_BEAT_MAX_LOOP_INTERVAL = 5  # seconds; how soon beat notices an admin edit of a schedule
CELERY_BEAT_SYNC_EVERY = 1  # write last_run_at after every dispatch: a restarted beat does not repeat a slot
PLATFORM_BEAT_LEASE_SECONDS = env_int("PLATFORM_BEAT_LEASE_SECONDS", 15)  # standby takes over within this

# Monitoring: workers and publishers send events, so Flower and `celery events` see every task.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # Django's LOGGING stays in charge (project/celery.py hook)

# --- datasets ---------------------------------------------------------------------------------------
# Dataset import and profiling (apps/datasets, docs/datasets.md). Files live under DATASETS_ROOT:
# uploads/ (stored uploads) and runs/<id>-<uuid>/ (one directory per import: Parquet copy, transcode, scratch).
DATASETS_ROOT = Path(os.environ.get("DATASETS_ROOT", MEDIA_ROOT / "datasets"))
DATASETS_CHUNK_BYTES = env_int("DATASETS_CHUNK_BYTES", 8 * 1024 * 1024)  # source bytes per chunk task: bounds child RSS
# Chunk count rounded up to a multiple of this (set it to the total prefork children on the dataset
# queue) so the last round of chunks keeps every child busy; chunks never exceed DATASETS_CHUNK_BYTES.
DATASETS_CHUNK_MULTIPLE = env_int("DATASETS_CHUNK_MULTIPLE", 2)
DATASETS_MAX_LINE_BYTES = env_int("DATASETS_MAX_LINE_BYTES", 16 * 1024 * 1024)  # longer lines are an error
DATASETS_EXACT_DISTINCT_BOUND = env_int("DATASETS_EXACT_DISTINCT_BOUND", 10_000)  # exact distinct/top values up to this
DATASETS_HASH_GROUP_BYTES = env_int("DATASETS_HASH_GROUP_BYTES", 32 * 1024 * 1024)  # row hashes held at once by the merge
DATASETS_SOFT_TIME_LIMIT = env_int("DATASETS_SOFT_TIME_LIMIT", 600)  # seconds per task; soft -> TIMED_OUT
DATASETS_TIME_LIMIT = env_int("DATASETS_TIME_LIMIT", 660)  # seconds per task; hard kill of the child
# The watchdog (datasets.recover_stuck, every minute): an import QUEUED this long that no worker of this
# deployment holds, with nothing waiting in the dataset queue, is published again, at most
# DATASETS_MAX_REQUEUES times, then FAILED with the reason; one RUNNING this long whose tasks nobody holds
# (its worker vanished) is FAILED with the reason.
DATASETS_STALE_AFTER = env_int("DATASETS_STALE_AFTER", 300)  # seconds
DATASETS_MAX_REQUEUES = env_int("DATASETS_MAX_REQUEUES", 3)
DATASETS_MAX_UPLOAD_BYTES = env_int("DATASETS_MAX_UPLOAD_BYTES", 2 * 1024 * 1024 * 1024)  # HTTP upload bound
# --- tracing -----------------------------------------------------------------------------------------
# apps/tracing: spans and audit events, buffered in each process and ingested on the ops_trace queue.
# Defaults and meanings: apps/tracing/conf.py; operations guide: docs/tracing.md.
TRACING_ENABLED = env_bool("TRACING_ENABLED", True)  # OpenTelemetry spans for requests, tasks, app code
TRACING_SERVICE_NAME = os.environ.get("OTEL_SERVICE_NAME", "task-platform")
# OTLP/HTTP collector: the standard OpenTelemetry variables. Unset: events are stored, not exported.
TRACING_OTLP_ENDPOINT = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else ""
)
TRACING_OTLP_TIMEOUT = float(os.environ.get("TRACING_OTLP_TIMEOUT", 3))  # short: an outage must not hold green threads
TRACING_FLUSH_INTERVAL = float(os.environ.get("TRACING_FLUSH_INTERVAL", 1))  # seconds an event may wait in a buffer
TRACING_BUFFER_MAX_EVENTS = env_int("TRACING_BUFFER_MAX_EVENTS", 20_000)  # per process; beyond: dropped, counted
TRACING_RETENTION_DAYS = float(os.environ.get("TRACING_RETENTION_DAYS", 14))  # purge task deletes older events

# --- Sentry ------------------------------------------------------------------------------------------
# The one place Sentry is initialised: every environment and process (web, workers, beat) loads these settings.
# Error reporting switched on by SENTRY_DSN (Django + Celery integrations).
# Traces stay with OpenTelemetry (traces_sample_rate 0): Sentry gets errors only.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
        integrations=[DjangoIntegration(), CeleryIntegration()],
        traces_sample_rate=0.0,
        send_default_pii=False,
    )
# --- control ---------------------------------------------------------------------------------------
# Task control plane (apps/control, docs/control.md): ledger, control API, live progress, dead letters,
# queue pause/resume, metrics.
INSTALLED_APPS += ["apps.control"]  # noqa: F405
MIDDLEWARE += ["apps.control.api_errors.JsonApiErrorsMiddleware"]  # JSON 404/500 under /api/  # noqa: F405
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "apps.control.api_errors.json_exception_handler"  # detail + code always
# Which deployment a worker belongs to (apps/core/workers.py): by default a digest of the database it
# works with; set the same value everywhere when hosts reach one database under different names.
PLATFORM_DEPLOYMENT = os.environ.get("PLATFORM_DEPLOYMENT", "")
CONTROL_LOST_AFTER = env_int("CONTROL_LOST_AFTER", 900)  # seconds without any event before LOST is considered
# --- mail ---------------------------------------------------------------------------------------------
# apps/mail: an outbox delivered by the io worker (compose/start/io) through real SMTP. See docs/mail.md.
# Application code (send_mail, EmailMessage.send) goes through the outbox; delivery uses an explicit SMTP
# connection built from the EMAIL_* settings below (apps/mail/smtp.py), never this backend.
EMAIL_BACKEND = "apps.mail.backends.OutboxEmailBackend"
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)  # STARTTLS after EHLO
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)  # implicit TLS (port 465)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)  # seconds per socket operation: a hung server ends in a timeout
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "platform@localhost")

MAIL_MAX_ATTEMPTS = env_int("MAIL_MAX_ATTEMPTS", 6)  # SMTP attempts before a transient failure becomes FAILED
MAIL_RETRY_BACKOFF_BASE = float(os.environ.get("MAIL_RETRY_BACKOFF_BASE", 2))  # seconds; doubles per attempt
MAIL_RETRY_BACKOFF_MAX = env_int("MAIL_RETRY_BACKOFF_MAX", 600)  # seconds
MAIL_SEND_SOFT_TIME_LIMIT = env_int("MAIL_SEND_SOFT_TIME_LIMIT", 60)  # per delivery task, enforced on every io pool
MAIL_SEND_TIME_LIMIT = env_int("MAIL_SEND_TIME_LIMIT", 75)
MAIL_CLAIM_LEASE = env_int("MAIL_CLAIM_LEASE", 120)  # s; > hard limit: a SENDING row older than this lost its worker
MAIL_SMTP_POOL_SIZE = env_int("MAIL_SMTP_POOL_SIZE", 200)  # idle SMTP connections kept per worker process
MAIL_SMTP_IDLE_SECONDS = env_int("MAIL_SMTP_IDLE_SECONDS", 30)  # idle connections older than this are closed
MAIL_DOMAIN_RATE = float(os.environ.get("MAIL_DOMAIN_RATE", 50))  # messages/s per recipient domain, all workers
MAIL_DOMAIN_BURST = env_int("MAIL_DOMAIN_BURST", 10)  # messages a quiet domain may receive at once
MAIL_MAX_ATTACHMENT_BYTES = env_int("MAIL_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024)  # per attachment
MAIL_MAX_RECIPIENTS = env_int("MAIL_MAX_RECIPIENTS", 100)  # per message (to + cc + bcc)
MAIL_BULK_BATCH_SIZE = env_int("MAIL_BULK_BATCH_SIZE", 25)  # messages per mail.bulk_send_batch task (enqueue_bulk)
# A batch starts no conversation after this many seconds (or half its soft time limit, if less); the rest go on
# in a continuation batch. It bounds how long a batch holds a green thread, which is what a transactional
# message waits for when every green thread is busy with bulk mail (docs/mail.md, "Bulk in batches").
MAIL_BULK_BATCH_SECONDS = float(os.environ.get("MAIL_BULK_BATCH_SECONDS", 10))
if not 1 <= MAIL_BULK_BATCH_SIZE <= 1000:  # mail.bulk_send_batch refuses more than 1,000 ids
    raise ValueError(f"MAIL_BULK_BATCH_SIZE must be 1 to 1000, got {MAIL_BULK_BATCH_SIZE}")
MAIL_REQUEUE_AFTER = env_int("MAIL_REQUEUE_AFTER", 15 * 60)  # s; QUEUED rows this overdue are re-enqueued
# Per-domain overrides, e.g. MAIL_DOMAIN_RATES="gmail.com=20,example.org=0.5" (0 = unlimited).
MAIL_DOMAIN_RATES = {k.strip().lower(): float(v) for k, v in
                     (item.split("=", 1) for item in env_list("MAIL_DOMAIN_RATES"))}
