"""What the console's live panels show, built in one pass and sent over its WebSocket every few seconds.

Each panel is computed on its own: a panel whose source fails (RabbitMQ down, a quorum queue not yet
ready, no worker answering) becomes ``{"unavailable": "<reason>"}`` and the others still show.
Where every number comes from is written in docs/control.md.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from apps.control import selectors, states
from apps.control.models import DeadLetter, PausedQueue, TaskRecord
from project import topology

logger = logging.getLogger(__name__)

RATE_WINDOW_SECONDS = 60  # publish/deliver rates: tasks sent/started in the last minute, per second
CHART_MINUTES = 60  # throughput and failure charts: one bar per minute over the last hour
SCHEDULED_LIMIT = 50
INSPECT_TIMEOUT = 1.0
CACHE_SECONDS = 2.0  # every console socket of one web process shares one snapshot this fresh
HEARTBEAT_FRESH_SECONDS = 10  # a worker whose heartbeat is older is not counted on to answer quickly
FAILED = [states.FAILURE, states.TIMED_OUT, states.LOST]


def _app():
    from project.celery import app

    return app


def panel(build, *args):
    """One panel's data, or why it is unavailable (never an exception: the page must keep working)."""
    try:
        return build(*args)
    except Exception as exc:  # noqa: BLE001  (broker, workers and database errors all become a reason)
        logger.info("console panel %s unavailable: %r", build.__name__, exc)
        reason = str(exc) or type(exc).__name__
        return {"unavailable": f"{type(exc).__name__}: {reason}"[:300]}


# --- workers (inspect broadcasts, run side by side) -------------------------------------------------
def inspect_workers(expected: int | None = None) -> dict[str, dict]:
    """stats, active_queues, active, reserved and scheduled of every worker, asked at the same time.
    ``expected``: how many workers should answer (from heartbeats), so the answers return early."""
    inspect = _app().control.inspect(timeout=INSPECT_TIMEOUT, limit=expected or None)
    methods = ("stats", "active_queues", "active", "reserved", "scheduled")
    with ThreadPoolExecutor(len(methods)) as pool:
        answers = dict(zip(methods, pool.map(lambda m: getattr(inspect, m)() or {}, methods)))
    return answers


def _pool_name(implementation: str) -> str:
    return implementation.rsplit(":", 1)[0].rsplit(".", 1)[-1] if implementation else "?"


def workers(answers: dict, heartbeats: dict[str, dict]) -> list[dict]:
    """One row per worker that answered or sent a heartbeat in the last minute."""
    now = time.time()
    done = {row["worker"]: row for row in TaskRecord.objects.exclude(worker="").values("worker").annotate(
        succeeded=Count("id", filter=Q(state=states.SUCCESS)),
        failed=Count("id", filter=Q(state__in=FAILED)))}
    hosts = set(answers["stats"]) | {h for h, beat in heartbeats.items() if now - beat["received_at"] < 60}
    rows = []
    for hostname in sorted(hosts):
        stats = answers["stats"].get(hostname, {})
        pool = stats.get("pool", {})
        beat = heartbeats.get(hostname, {})
        active = answers["active"].get(hostname)
        rows.append({
            "hostname": hostname,
            "role": hostname.split("@", 1)[0].split("-", 1)[0],
            "pool": _pool_name(pool.get("implementation", "")),
            "concurrency": pool.get("max-concurrency"),
            "busy": len(active) if active is not None else beat.get("active"),
            "queues": sorted(q["name"] for q in answers["active_queues"].get(hostname, [])),
            "succeeded": done.get(hostname, {}).get("succeeded", 0),
            "failed": done.get(hostname, {}).get("failed", 0),
            "processed": beat.get("processed"),
            "last_heartbeat": beat.get("timestamp"),
            # ru_maxrss of the worker's main process, in KiB on Linux (Celery's `stats`): its peak RSS.
            "max_rss_kib": (stats.get("rusage") or {}).get("maxrss"),
            "answered": hostname in answers["stats"],
        })
    return rows


def _unacked_by_queue(answers: dict) -> dict[str, int]:
    """Messages workers hold without an ack (acks_late): running, prefetched, or waiting for their ETA."""
    counts: dict[str, int] = {}
    for method in ("active", "reserved", "scheduled"):
        for tasks in answers[method].values():
            for task in tasks:
                request = task.get("request", task)  # `scheduled` wraps the request
                queue = (request.get("delivery_info") or {}).get("routing_key")
                if queue:
                    counts[queue] = counts.get(queue, 0) + 1
    return counts


# --- queues ---------------------------------------------------------------------------------------
def _rate(field: str, since) -> dict[str, float]:
    rows = TaskRecord.objects.filter(**{f"{field}__gte": since}).values("queue").annotate(n=Count("id"))
    return {row["queue"]: round(row["n"] / RATE_WINDOW_SECONDS, 2) for row in rows}


def queues(answers: dict | None) -> list[dict]:
    now = timezone.now()
    depths = selectors.queue_depth_map()
    paused = {p.queue: p for p in PausedQueue.objects.all()}
    since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
    published, delivered = _rate("sent_at", since), _rate("started_at", since)
    ages = selectors.oldest_queued_age(now)
    stored = dict(DeadLetter.objects.filter(replayed_at__isnull=True).values_list("queue")
                  .annotate(n=Count("id")).values_list("queue", "n"))
    unacked = _unacked_by_queue(answers) if answers is not None else None
    rows = []
    for lane in topology.LANES:
        dead_in_broker = depths.get(topology.dead_letter_queue_name(lane.name))
        rows.append({
            "name": lane.name, "role": lane.role, "ready": depths.get(lane.name),
            "unacked": unacked.get(lane.name, 0) if unacked is not None else None,
            "publish_rate": published.get(lane.name, 0.0), "deliver_rate": delivered.get(lane.name, 0.0),
            "oldest_age": round(ages[lane.name], 1) if lane.name in ages else None,
            "paused": lane.name in paused,
            "paused_reason": paused[lane.name].reason if lane.name in paused else "",
            "dead_letters": (dead_in_broker or 0) + stored.get(lane.name, 0),
        })
    return rows


# --- charts and scheduled ----------------------------------------------------------------------------
def charts(now=None) -> dict:
    """Tasks finished per minute and queue over the last hour, split into succeeded and failed."""
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=CHART_MINUTES)
    series = {lane.name: {"done": [0] * CHART_MINUTES, "failed": [0] * CHART_MINUTES} for lane in topology.LANES}
    rows = (TaskRecord.objects.filter(finished_at__gte=start, state__in=states.TERMINAL)
            .annotate(minute=TruncMinute("finished_at")).values("queue", "minute")
            .annotate(done=Count("id", filter=Q(state=states.SUCCESS)),
                      failed=Count("id", filter=Q(state__in=FAILED))))
    for row in rows:
        if row["queue"] not in series or row["minute"] is None:
            continue
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < CHART_MINUTES:
            series[row["queue"]]["done"][index] += row["done"]
            series[row["queue"]]["failed"][index] += row["failed"]
    return {"start": start.isoformat(), "minutes": CHART_MINUTES, "queues": series}


def scheduled(now=None) -> list[dict]:
    """Tasks waiting for a time: retrying ones and those published with a countdown/ETA, soonest first."""
    now = now or timezone.now()
    qs = (TaskRecord.objects.filter(Q(state=states.RETRY) | Q(state=states.QUEUED, eta__gt=now))
          .order_by("eta", "sent_at")[:SCHEDULED_LIMIT])
    return [{"task_id": r.task_id, "name": r.name, "queue": r.queue, "state": r.state, "retries": r.retries,
             "due": r.eta.isoformat() if r.eta else None, "error": (r.error or "")[:200]} for r in qs]


def counts() -> dict:
    return selectors.state_counts()["by_state"]


# --- the whole snapshot ------------------------------------------------------------------------------
def build(heartbeats: dict[str, dict] | None = None) -> dict:
    heartbeats = dict(heartbeats or {})
    fresh = sum(time.time() - beat["received_at"] < HEARTBEAT_FRESH_SECONDS for beat in heartbeats.values())
    answers = panel(inspect_workers, fresh)
    workers_ok = "unavailable" not in answers
    return {
        "at": timezone.now().isoformat(),
        "queues": panel(queues, answers if workers_ok else None),
        "workers": panel(workers, answers, heartbeats) if workers_ok else answers,
        "charts": panel(charts),
        "scheduled": panel(scheduled),
        "counts": panel(counts),
    }


_cache: dict = {"at": 0.0, "value": None}
_cache_lock = threading.Lock()


def cached(heartbeats: dict[str, dict] | None = None) -> dict:
    """One snapshot per CACHE_SECONDS per process, however many consoles are open."""
    with _cache_lock:
        if _cache["value"] is None or time.monotonic() - _cache["at"] >= CACHE_SECONDS:
            _cache["value"] = build(heartbeats)
            _cache["at"] = time.monotonic()
        return _cache["value"]
