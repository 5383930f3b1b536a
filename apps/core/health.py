"""What `manage.py health` and /api/v1/health/ report: broker, database, workers per role, queue depths.

Fast by default: workers as the event recorder last heard them (apps/core/workers.py), queue depths and
consumer counts from RabbitMQ with passive declares, nothing waits for a broadcast. Each fact says how
old it is. ``live=True`` asks the workers instead (a broadcast that waits its reply timeout).

Besides what is down, it flags what would make tasks vanish quietly: workers on our broker that are not
part of this deployment, consumers on our queues that none of our workers accounts for, and an event
recorder that is missing (no heartbeats: the worker list is stale) or doubled (events split between two).
"""
from __future__ import annotations

import time

from django.db import connection
from django.utils import timezone

from apps.core import workers as worker_registry
from apps.core.broker import BrokerUnavailable, check_broker, queue_depths
from apps.core.cluster import cluster_report
from project import topology

ISOLATION_HINT = "give each stack a RabbitMQ vhost of its own (CELERY_BROKER_URL; bin/run does by default)"


def worker_report(timeout: float = 1.0, include_active: bool = False, live: bool = True) -> list[dict]:
    """Workers with role, pool, concurrency, pid, queues, ``foreign`` and ``seen_seconds_ago``: asked
    now (``live``), or as last heard by the recorder."""
    if live:
        return worker_registry.live_workers(timeout=timeout, include_active=include_active)
    return worker_registry.known_workers()


def health_report(live: bool = False, timeout: float = 1.0) -> dict:
    started = time.monotonic()
    report: dict = {"ok": True, "problems": [], "checked_at": timezone.now().isoformat(),
                    "workers_source": "broadcast inspection, now" if live else
                    "heartbeats recorded by the event recorder (seen_seconds_ago: age of each)",
                    "queues_source": "RabbitMQ passive declares, now"}

    try:
        check_broker()
        report["broker"] = "ok"
    except BrokerUnavailable as exc:
        report.update(broker=str(exc), ok=False)
        report["problems"].append(str(exc))

    try:
        connection.ensure_connection()
        report["database"] = f"ok ({connection.vendor})"
    except Exception as exc:
        report.update(database=f"unreachable: {exc}", ok=False)
        report["problems"].append(f"database unreachable: {exc}")

    can_ask = report["broker"] == "ok" if live else report["database"].startswith("ok")
    report["workers"] = worker_report(timeout=timeout, live=live) if can_ask else []
    ours = [w for w in report["workers"] if not w["foreign"]]
    for worker in report["workers"]:
        if worker["foreign"]:
            report["problems"].append(
                f"worker {worker['hostname']} (pid {worker['pid']}) consumes {', '.join(worker['queues']) or 'queues'} "
                f"on this broker but is not part of this deployment (another stack?): it takes this deployment's "
                f"tasks and runs them against another database; {ISOLATION_HINT}")

    report["roles"] = {}
    for role, spec in topology.ROLES.items():
        online = [w for w in ours if w["role"] == role]
        missing_queues = sorted(set(spec["queues"]) - {q for w in online for q in w["queues"]})
        report["roles"][role] = {"expected_pool": spec["pool"], "online": len(online), "missing_queues": missing_queues}
        if not online:
            report["problems"].append(f"no {role} worker online (start compose/start/{role})")
        elif missing_queues:
            report["problems"].append(f"{role} workers do not consume {', '.join(missing_queues)}")

    report["queues"] = []
    if report["broker"] == "ok":
        names = topology.all_queue_names()
        try:
            depths = {d.name: d for d in queue_depths([*names, worker_registry.HEARTBEAT_QUEUE])}
        except BrokerUnavailable as exc:  # reachable a moment ago, not now
            depths = {}
            report["problems"].append(str(exc))
        for name in names if depths else []:
            depth = depths[name]
            report["queues"].append({"name": name, "messages": depth.messages, "consumers": depth.consumers,
                                     "unavailable": depth.unavailable})
            if depth.unavailable:
                report["problems"].append(depth.unavailable)
            elif depth.messages is None:
                report["problems"].append(f"queue {name} is not declared (start a worker to declare it)")
            accounted = sum(1 for w in ours if name in w["queues"])  # one consumer per queue per worker
            if depth.consumers and depth.consumers > accounted:
                report["problems"].append(
                    f"queue {name} has {depth.consumers} consumer(s) but this deployment's workers account for "
                    f"{accounted}: something else takes its tasks; {ISOLATION_HINT}")
        if depths and not live:
            _check_recorder(report, depths[worker_registry.HEARTBEAT_QUEUE])
    report["cluster"] = cluster_report()  # every node up/down, each queue's leader and members
    report["problems"].extend(report["cluster"]["problems"])
    report["ok"] = not report["problems"]
    report["elapsed_ms"] = round(1000 * (time.monotonic() - started), 1)
    return report


def _check_recorder(report: dict, heartbeats) -> None:
    recorders = heartbeats.consumers or 0
    report["recorders"] = recorders
    if recorders == 0:
        report["problems"].append(
            "the event recorder is not running: worker heartbeats are not recorded, so the workers above are "
            "as last heard (start compose/start/recorder, or ask the workers: --live / ?live=1)")
    elif recorders > 1:
        report["problems"].append(
            f"{recorders} event recorders consume this broker's worker events: two stacks share this vhost "
            f"and split each other's events; {ISOLATION_HINT}")
