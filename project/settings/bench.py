"""Benchmark settings: the test settings plus the benchmark tasks (bench/tasks.py)."""
from .test import *  # noqa: F401,F403
from .test import CELERY_IMPORTS, CELERY_TASK_ROUTES, topology

CELERY_IMPORTS = [*CELERY_IMPORTS, "bench.tasks"]
CELERY_TASK_ROUTES = {
    "bench.cpu.*": topology.route(topology.DATASET),
    "bench.io.*": topology.route(topology.OPS_TRACE),
    **CELERY_TASK_ROUTES,
}
