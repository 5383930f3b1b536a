"""The RabbitMQ topology: the one place that names queues, exchanges, lanes and dead letters.

Import-light on purpose (kombu only): settings, start-script tests and operator commands all read it.

Every work queue is a durable *quorum* queue on its own durable *direct* exchange, routing key = queue
name. Quorum queues give us what classic queues cannot (see docs/architecture.md):
  * ``x-delivery-limit``: a message that keeps killing its worker is dead-lettered after a bounded
    number of deliveries instead of looping forever under acks_late + reject_on_worker_lost;
  * at-least-once dead-lettering (``x-dead-letter-strategy``), so a dead letter is never dropped;
  * ``x-overflow: reject-publish``: a full queue nacks the publish, the publisher gets an error.
Dead letters go to a per-queue durable quorum queue ``<queue>.dead`` through one direct exchange.

Queue arguments are fixed at declaration time: changing one below needs the queue deleted and
redeclared (RabbitMQ answers PRECONDITION_FAILED otherwise). docs/architecture.md has the procedure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from kombu import Exchange, Queue


@dataclass(frozen=True)
class Lane:
    """A work queue and the limits RabbitMQ enforces on it."""

    name: str
    role: str  # the worker role whose start script consumes this queue
    max_length: int  # backpressure bound: publishes beyond it are refused (nacked)
    delivery_limit: int = 3  # redeliveries (worker lost, requeue) before the message is dead-lettered
    description: str = ""


DATASET = "dataset"
MAIL = "mail"
MAIL_BULK = "mail_bulk"
OPS_TRACE = "ops_trace"

LANES: tuple[Lane, ...] = (
    Lane(DATASET, "cpu", max_length=100_000, description="dataset import and profiling (CPU-bound)"),
    Lane(MAIL, "io", max_length=100_000, description="transactional mail: password resets, receipts"),
    # A second mail lane so a newsletter backlog never delays a password reset: quorum queues have no
    # priorities on RabbitMQ 3.x, and a separate queue gives the transactional lane its own prefetch.
    Lane(MAIL_BULK, "io", max_length=1_000_000, description="bulk mail: newsletters, campaigns"),
    Lane(OPS_TRACE, "io", max_length=1_000_000, description="trace batches, task spans, housekeeping"),
)
LANES_BY_NAME = {lane.name: lane for lane in LANES}

# Worker roles: which queues each start script (compose/start/<role>) consumes, and with which pool.
# soft_shutdown_seconds: on SIGTERM the worker stops taking tasks and gives running ones this long
# (Celery's worker_soft_shutdown_timeout), then cancels what is left, which acks_late requeues. It is
# the longest hard time limit of the tasks the role runs (datasets: DATASETS_TIME_LIMIT; io: the
# default CELERY_TASK_TIME_LIMIT), so a task within its limits finishes; tests/core/test_kubernetes.py
# checks it against the settings and the manifests' terminationGracePeriodSeconds.
ROLES: dict[str, dict] = {
    "cpu": {"pool": "prefork", "queues": [lane.name for lane in LANES if lane.role == "cpu"],
            "soft_shutdown_seconds": 660},
    "io": {"pool": "eventlet", "queues": [lane.name for lane in LANES if lane.role == "io"],
           "soft_shutdown_seconds": 330},
}
# After the soft-shutdown window: cancel and requeue what is left, close connections, exit.
SHUTDOWN_MARGIN_SECONDS = 30


def soft_shutdown_seconds(role: str) -> int:
    """The role's soft-shutdown window; 0 (Celery's default: off) for a process that is no worker role."""
    return ROLES[role]["soft_shutdown_seconds"] if role in ROLES else 0


def termination_grace_seconds(role: str) -> int:
    """Kubernetes' terminationGracePeriodSeconds for the role's pods: the window plus the margin."""
    return soft_shutdown_seconds(role) + SHUTDOWN_MARGIN_SECONDS

# Replicas of every quorum queue (x-quorum-initial-group-size), set explicitly: left out, RabbitMQ puts a
# member on every node of the cluster, so a 7-node cluster would replicate every message 7 times. 3 keeps
# a majority through the loss of any one node; 5 through two. Odd only (an even size tolerates no more
# losses than the odd size below it) and at most 7 (each member costs a write per message). On a cluster
# with fewer nodes RabbitMQ uses the nodes there are: one member on a single node. Fixed at declaration
# like every queue argument (docs/architecture.md: changing one).
QUORUM_GROUP_SIZE = int(os.environ.get("PLATFORM_QUORUM_GROUP_SIZE", "3"))
if QUORUM_GROUP_SIZE not in (1, 3, 5, 7):
    raise ValueError(f"PLATFORM_QUORUM_GROUP_SIZE must be 1, 3, 5 or 7, not {QUORUM_GROUP_SIZE}")

DEAD_LETTER_EXCHANGE = "dead_letter"
DEAD_LETTER_SUFFIX = ".dead"

# kombu's native-delayed-delivery exchanges (28 quorum queues with TTL 2^n s, chained by dead-lettering)
# end at this topic exchange; each work queue is bound to it with "#.<queue>" besides its direct exchange.
DELAY_ENTRY_EXCHANGE = "celery_delayed_27"
DELAY_DELIVERY_EXCHANGE = "celery_delayed_delivery"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}{DEAD_LETTER_SUFFIX}"


def dead_letter_exchange() -> Exchange:
    return Exchange(DEAD_LETTER_EXCHANGE, type="direct", durable=True)


def work_queue(lane: Lane) -> Queue:
    return Queue(
        lane.name,
        Exchange(lane.name, type="direct", durable=True),
        routing_key=lane.name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-quorum-initial-group-size": QUORUM_GROUP_SIZE,
            "x-delivery-limit": lane.delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": lane.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": lane.max_length,
        },
    )


def dead_letter_queue(lane: Lane) -> Queue:
    # Unbounded on purpose: at-least-once dead-lettering keeps a message in its source queue until the
    # dead-letter queue confirms it, so a bound here would turn into a stuck work queue.
    return Queue(
        dead_letter_queue_name(lane.name),
        dead_letter_exchange(),
        routing_key=lane.name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": QUORUM_GROUP_SIZE},
    )


def work_queues() -> tuple[Queue, ...]:
    return tuple(work_queue(lane) for lane in LANES)


def dead_letter_queues() -> tuple[Queue, ...]:
    return tuple(dead_letter_queue(lane) for lane in LANES)


def route(queue: str) -> dict:
    """A task route to ``queue`` through its own direct exchange (Celery would otherwise use the default one)."""
    return {"queue": queue, "exchange": queue, "routing_key": queue}


def all_queue_names() -> list[str]:
    return [lane.name for lane in LANES] + [dead_letter_queue_name(lane.name) for lane in LANES]
