"""What `manage.py health` and /api/v1/health/ report: broker, database, workers per role, queue depths."""
from __future__ import annotations

from django.db import connection

from apps.core.broker import BrokerUnavailable, check_broker, queue_depths
from apps.core.cluster import cluster_report
from project import topology


def _pool_name(implementation: str) -> str:
    # 'celery.concurrency.eventlet:TaskPool' -> 'eventlet'
    return implementation.rsplit(":", 1)[0].rsplit(".", 1)[-1] if implementation else "?"


def worker_report(timeout: float = 2.0, include_active: bool = False) -> list[dict]:
    """Online workers with role, pool, concurrency, pid and the queues each consumes (and, if asked, the
    tasks each is running)."""
    from project.celery import app

    inspect = app.control.inspect(timeout=timeout)
    stats = inspect.stats() or {}
    queues = inspect.active_queues() or {}
    active = (inspect.active() or {}) if include_active else {}
    workers = []
    for hostname in sorted(stats):
        pool = stats[hostname].get("pool", {})
        worker = {
            "hostname": hostname,
            "role": hostname.split("@", 1)[0].split("-", 1)[0],  # node "cpu@host" or "cpu-2@host": role cpu
            "pool": _pool_name(pool.get("implementation", "")),
            "concurrency": pool.get("max-concurrency"),
            "queues": sorted(q["name"] for q in queues.get(hostname, [])),
            "pid": stats[hostname].get("pid"),
        }
        if include_active:
            worker["active_tasks"] = [{"id": t.get("id"), "name": t.get("name"), "started": t.get("time_start")}
                                      for t in active.get(hostname, [])]
        workers.append(worker)
    return workers


def health_report() -> dict:
    report: dict = {"ok": True, "problems": []}

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

    report["workers"] = worker_report() if report["broker"] == "ok" else []
    report["roles"] = {}
    for role, spec in topology.ROLES.items():
        online = [w for w in report["workers"] if w["role"] == role]
        missing_queues = sorted(set(spec["queues"]) - {q for w in online for q in w["queues"]})
        report["roles"][role] = {"expected_pool": spec["pool"], "online": len(online), "missing_queues": missing_queues}
        if not online:
            report["problems"].append(f"no {role} worker online (start compose/start/{role})")
        elif missing_queues:
            report["problems"].append(f"{role} workers do not consume {', '.join(missing_queues)}")

    report["queues"] = []
    if report["broker"] == "ok":
        try:
            depths = queue_depths(topology.all_queue_names())
        except BrokerUnavailable as exc:  # reachable a moment ago, not now
            depths = []
            report["problems"].append(str(exc))
        for depth in depths:
            report["queues"].append({"name": depth.name, "messages": depth.messages, "consumers": depth.consumers,
                                     "unavailable": depth.unavailable})
            if depth.unavailable:
                report["problems"].append(depth.unavailable)
            elif depth.messages is None:
                report["problems"].append(f"queue {depth.name} is not declared (start a worker to declare it)")
    report["cluster"] = cluster_report()  # every node up/down, each queue's leader and members
    report["problems"].extend(report["cluster"]["problems"])
    report["ok"] = not report["problems"]
    return report
