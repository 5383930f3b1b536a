"""Prometheus metrics, computed at scrape time from RabbitMQ, the ledger and the workers.

Queue depth is the broker's ready-message count (passive declare). The age of the oldest message is not
something RabbitMQ tells about quorum queues without consuming, so it comes from the ledger (oldest task
still QUEUED per queue) and, for ``<queue>.dead``, from the stored dead letters (their x-death time).
Dead-letter depth = messages still in the broker + stored dead letters not replayed or purged.
"""
from __future__ import annotations

from django.db.models import Count, Q, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from apps.control import selectors, states
from apps.control.models import DeadLetter, PausedQueue, TaskRecord
from project import topology

RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class PlatformCollector:
    def collect(self):
        depth = GaugeMetricFamily("platform_queue_messages", "Messages waiting per queue (dead-letter queues "
                                  "include stored dead letters)", labels=["queue"])
        age = GaugeMetricFamily("platform_queue_oldest_message_age_seconds",
                                "Age of the oldest waiting message per queue", labels=["queue"])
        up = GaugeMetricFamily("platform_broker_up", "1 if RabbitMQ answered this scrape")
        try:
            depths = selectors.queue_depth_map()
            up.add_metric([], 1)
        except Exception:  # noqa: BLE001  (scrape still returns the database figures)
            depths = {}
            up.add_metric([], 0)
        stored = dict(DeadLetter.objects.filter(replayed_at__isnull=True).values_list("dead_letter_queue")
                      .annotate(n=Count("id")).values_list("dead_letter_queue", "n"))
        ages = {**selectors.oldest_queued_age(), **selectors.oldest_dead_letter_age()}
        for name in topology.all_queue_names():
            value = depths.get(name)
            if name.endswith(topology.DEAD_LETTER_SUFFIX):
                value = (value or 0) + stored.get(name, 0)
            if value is not None:
                depth.add_metric([name], value)
            age.add_metric([name], ages.get(name, 0.0))
        yield up
        yield depth
        yield age

        paused = GaugeMetricFamily("platform_queue_paused", "1 while a queue is paused by the control plane",
                                   labels=["queue"])
        paused_names = set(PausedQueue.objects.values_list("queue", flat=True))
        for lane in topology.LANES:
            paused.add_metric([lane.name], 1 if lane.name in paused_names else 0)
        yield paused

        tasks = GaugeMetricFamily("platform_tasks", "Tasks in the ledger by state and queue", labels=["state", "queue"])
        counts = {(s, q or "unknown"): n for q, s, n in
                  TaskRecord.objects.values_list("queue", "state").annotate(n=Count("id")).values_list("queue", "state", "n")}
        for state in states.ALL:
            if not any(key[0] == state for key in counts):
                counts[(state, "all")] = 0
        for (state, queue), n in sorted(counts.items()):
            tasks.add_metric([state, queue], n)
        yield tasks

        runtime = HistogramMetricFamily("platform_task_runtime_seconds", "Run time of finished tasks (ledger)",
                                        labels=["name"])
        buckets = {f"le_{i}": Count("id", filter=Q(runtime__lte=b)) for i, b in enumerate(RUNTIME_BUCKETS)}
        rows = (TaskRecord.objects.filter(runtime__isnull=False).values("name")
                .annotate(total=Count("id"), seconds=Sum("runtime"), **buckets))
        for row in rows:
            cumulative = [(str(b), row[f"le_{i}"]) for i, b in enumerate(RUNTIME_BUCKETS)] + [("+Inf", row["total"])]
            runtime.add_metric([row["name"] or "unknown"], cumulative, sum_value=row["seconds"] or 0.0)
        yield runtime

        workers = GaugeMetricFamily("platform_workers_online", "Workers online (as the recorder last heard them), by pool", labels=["pool"])
        try:
            online = selectors.workers(timeout=1.0)
        except Exception:  # noqa: BLE001
            online = []
        by_pool: dict[str, int] = {"prefork": 0, "eventlet": 0}
        for worker in online:
            by_pool[worker["pool"]] = by_pool.get(worker["pool"], 0) + 1
        for pool, n in sorted(by_pool.items()):
            workers.add_metric([pool], n)
        yield workers


def render() -> tuple[bytes, str]:
    registry = CollectorRegistry()
    registry.register(PlatformCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
