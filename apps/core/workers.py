"""Which workers serve this deployment: from what is already known (fast), or by asking them (live).

Known: Celery workers send a heartbeat event every 2 s, and each of ours also announces, every
ANNOUNCE_INTERVAL seconds, its pool, concurrency, start-script queues and deployment (AnnounceWorker, a
consumer bootstep, sends it from the worker's timer like Celery's own heartbeat). The event recorder
writes both into WorkerRecord (apps/control/recorder.py consumes HEARTBEAT_QUEUE). Reading that is one
query: no broadcast, no waiting out a reply timeout, and every fact comes with its age.

"Part of this deployment" means: works with this deployment's database. The deployment id is a digest of
the database's identity (or PLATFORM_DEPLOYMENT where hosts name the database differently). A worker
that announces another id, or never announces one, consumes our broker but does its work elsewhere:
another stack on the same vhost, taking our tasks.

Live: a broadcast inspection that waits ``timeout`` seconds for every reply (``--live``, ``?live=1``).
"""
from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from celery import bootsteps
from django.utils import timezone
from kombu import Exchange, Queue

from apps.core.models import WorkerRecord
from project.celery import app

# Heartbeats, announcements, worker-online and worker-offline events for the recorder. Worker events are
# only worth anything while fresh: a short TTL and a small bound keep a stopped recorder from piling them up.
HEARTBEAT_QUEUE = "core.worker_heartbeats"
HEARTBEAT_QUEUE_TTL_MS = 30_000
HEARTBEAT_QUEUE_MAX_LENGTH = 10_000
ANNOUNCE_EVENT = "worker-platform"
ANNOUNCE_INTERVAL = 5.0  # seconds
# A worker heard of for this long without an announcement is not one of ours (another codebase).
ANNOUNCE_GRACE = timedelta(seconds=3 * ANNOUNCE_INTERVAL)
# Online while its newest heartbeat is younger than this many heartbeat intervals (Celery's own expiry
# window for worker state, celery.events.state.HEARTBEAT_EXPIRE_WINDOW), and never less than MIN_ONLINE_WINDOW.
HEARTBEAT_EXPIRE_WINDOW = 3.5
MIN_ONLINE_WINDOW = 10.0  # seconds


def heartbeat_queue() -> Queue:
    return Queue(HEARTBEAT_QUEUE, Exchange("celeryev", type="topic", durable=True), routing_key="worker.#",
                 durable=True, queue_arguments={"x-message-ttl": HEARTBEAT_QUEUE_TTL_MS,
                                                "x-max-length": HEARTBEAT_QUEUE_MAX_LENGTH})


def deployment_id() -> str:
    """This deployment: PLATFORM_DEPLOYMENT, else a digest of the database it works with."""
    from django.conf import settings
    from django.db import connections

    if getattr(settings, "PLATFORM_DEPLOYMENT", ""):
        return settings.PLATFORM_DEPLOYMENT
    db = connections["default"].settings_dict
    identity = "|".join(str(db.get(key) or "") for key in ("ENGINE", "HOST", "PORT", "NAME"))
    return hashlib.sha1(identity.encode()).hexdigest()[:12]


def pool_name(implementation: str) -> str:
    # 'celery.concurrency.eventlet:TaskPool' or 'celery.concurrency.eventlet' -> 'eventlet'
    return implementation.rsplit(":", 1)[0].rsplit(".", 1)[-1] if implementation else "?"


def role_of(hostname: str) -> str:
    return hostname.split("@", 1)[0].split("-", 1)[0]  # node "cpu@host" or "cpu-2@host": role cpu


# --- the worker side -----------------------------------------------------------------------------------
class AnnounceWorker(bootsteps.StartStopStep):
    """Consumer bootstep (added in CoreConfig.ready): announce this worker on the event stream now and
    every ANNOUNCE_INTERVAL seconds, from the consumer's timer, as Celery's Heart does for heartbeats."""

    requires = ("celery.worker.consumer.heart:Heart",)

    def __init__(self, c, **kwargs):
        self.timer_entry = None
        super().__init__(c, **kwargs)

    def start(self, c) -> None:
        fields = {
            "deployment": deployment_id(),
            "pool": pool_name(type(c.pool).__module__) if c.pool is not None else "?",
            "concurrency": getattr(c.controller, "concurrency", None),
            "queues": sorted(c.app.amqp.queues.consume_from),
        }
        self._send(c, fields)
        self.timer_entry = c.timer.call_repeatedly(ANNOUNCE_INTERVAL, self._send, (c, fields))

    def stop(self, c) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop

    @staticmethod
    def _send(c, fields: dict) -> None:
        if c.event_dispatcher is not None and c.event_dispatcher.enabled:
            c.event_dispatcher.send(ANNOUNCE_EVENT, **fields)


# --- the recorder side ---------------------------------------------------------------------------------
def record_worker_events(events: list[dict]) -> int:
    """worker-* events into WorkerRecord (called with each recorder batch); returns the workers touched."""
    by_worker: dict[tuple[str, int], list[dict]] = {}
    for event in events:
        key = (str(event.get("hostname") or ""), int(event.get("pid") or 0))
        if key[0] and key[1]:
            by_worker.setdefault(key, []).append(event)
    for (hostname, pid), worker_events in by_worker.items():
        fields: dict = {}
        for event in sorted(worker_events, key=lambda e: float(e.get("timestamp") or 0)):
            seen = datetime.fromtimestamp(float(event.get("timestamp") or 0), tz=dt_timezone.utc)
            fields.update(last_seen_at=seen, offline_at=seen if event.get("type") == "worker-offline" else None)
            if event.get("type") == ANNOUNCE_EVENT:
                fields.update(deployment=str(event.get("deployment") or "")[:64], pool=str(event.get("pool") or ""),
                              concurrency=event.get("concurrency"), queues=list(event.get("queues") or []))
            else:
                fields.update(heartbeat_interval=float(event.get("freq") or 2.0), active=event.get("active"),
                              processed=event.get("processed"))
        if not WorkerRecord.objects.filter(hostname=hostname, pid=pid).update(**fields):
            WorkerRecord.objects.bulk_create([WorkerRecord(hostname=hostname, pid=pid, **fields)], ignore_conflicts=True)
    return len(by_worker)


# --- read: known (fast) --------------------------------------------------------------------------------
def _is_foreign(record, ours: str, now) -> bool:
    if record.deployment:
        return record.deployment != ours
    return now - record.first_seen_at > ANNOUNCE_GRACE  # heard of, never announced: another codebase


def known_workers(now=None) -> list[dict]:
    """Workers online now, as their last events say, with how old that news is (``seen_seconds_ago``).
    ``foreign``: consumes our broker but is not part of this deployment."""
    now = now or timezone.now()
    ours = deployment_id()
    workers = []
    for record in WorkerRecord.objects.filter(offline_at__isnull=True, last_seen_at__isnull=False):
        window = max(HEARTBEAT_EXPIRE_WINDOW * (record.heartbeat_interval or 2.0), MIN_ONLINE_WINDOW)
        if (now - record.last_seen_at).total_seconds() > window:
            continue
        workers.append({
            "hostname": record.hostname, "role": role_of(record.hostname), "pool": record.pool or "?",
            "concurrency": record.concurrency, "queues": list(record.queues), "pid": record.pid,
            "foreign": _is_foreign(record, ours, now), "active": record.active, "processed": record.processed,
            "seen_seconds_ago": round(max(0.0, (now - record.last_seen_at).total_seconds()), 1),
        })
    return workers


def foreign_hostnames(now=None) -> set[str]:
    """Node names of workers known not to be ours (an unannounced newcomer is given the benefit of the doubt)."""
    now = now or timezone.now()
    ours = deployment_id()
    return {r.hostname for r in WorkerRecord.objects.filter(offline_at__isnull=True) if _is_foreign(r, ours, now)}


def forget_gone(older_than: timedelta = timedelta(days=1)) -> int:
    """Drop rows of workers not heard of for a day, so the table does not grow with every restart."""
    return WorkerRecord.objects.filter(last_seen_at__lt=timezone.now() - older_than).delete()[0]


# --- read: live (a broadcast) --------------------------------------------------------------------------
def _broadcast(command: str, timeout: float) -> list[tuple[str, object]]:
    """Every reply as (hostname, answer): a list, not a dict, so two workers with one name both count."""
    replies = app.control.broadcast(command, reply=True, timeout=timeout) or []
    return [(hostname, answer) for reply in replies for hostname, answer in reply.items()]


def live_workers(timeout: float = 1.0, include_active: bool = False) -> list[dict]:
    """Ask every worker on the broker (waits ``timeout``): pool, concurrency, queues consumed right now
    (paused ones drop out) and, if asked, the tasks each is running."""
    stats = _broadcast("stats", timeout)
    queues = dict(_broadcast("active_queues", timeout))
    active = dict(_broadcast("active", timeout)) if include_active else {}
    now, ours = timezone.now(), deployment_id()
    records = {(r.hostname, r.pid): r for r in WorkerRecord.objects.all()}
    workers = []
    for hostname, answer in sorted(stats, key=lambda item: item[0]):
        answer = answer if isinstance(answer, dict) else {}
        pool, pid = answer.get("pool", {}), answer.get("pid")
        record = records.get((hostname, pid))
        worker = {
            "hostname": hostname, "role": role_of(hostname), "pool": pool_name(pool.get("implementation", "")),
            "concurrency": pool.get("max-concurrency"), "pid": pid,
            "queues": sorted(q["name"] for q in queues.get(hostname) or []),
            # Not yet heard of by the recorder: unknown, not foreign.
            "foreign": bool(record and _is_foreign(record, ours, now)), "seen_seconds_ago": 0.0,
        }
        if include_active:
            worker["active_tasks"] = [{"id": t.get("id"), "name": t.get("name"), "started": t.get("time_start")}
                                      for t in active.get(hostname) or []]
        workers.append(worker)
    return workers


def held_task_ids(timeout: float = 1.5) -> set[str]:
    """Ids of the tasks this deployment's workers hold (running, reserved, waiting for an ETA). A worker
    known to be foreign does not count: what it holds is done against another database. (Replies carry
    node names only: a foreign worker with the same node name as one of ours counts as ours.)"""
    foreign = foreign_hostnames() - {r["hostname"] for r in known_workers() if not r["foreign"]}
    held: set[str] = set()
    for command in ("active", "reserved", "scheduled"):
        for hostname, tasks in _broadcast(command, timeout):
            if hostname in foreign:
                continue
            for task in tasks or []:
                held.add(task.get("id") or (task.get("request") or {}).get("id"))
    return held
