"""Dramatiq, as the peer: the job queue a Celery user would pick instead, stock (RabbitmqBroker with its
defaults, default middleware, no result backend) on the same RabbitMQ. Started by bench/run.py as
`dramatiq bench.dramatiq_app --processes P --threads T --queues peer`; bench/run.py publishes to it with
a broker of its own (dramatiq.Message by actor name), so importing this module is only the worker's job.

Stock means classic queues (Dramatiq declares its own, with a dead-letter and a delay queue beside each)
and no publisher confirms: less work per message than the platform does, which is the point of a peer.
"""
import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = "peer"

dramatiq.set_broker(RabbitmqBroker(url=os.environ.get("DRAMATIQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")))


@dramatiq.actor(queue_name=QUEUE)
def noop():
    return None


@dramatiq.actor(queue_name=QUEUE)
def sentinel(path: str):
    with open(path, "w") as f:
        f.write(repr(time.time()))


@dramatiq.actor(queue_name=QUEUE)
def latency(sent_at: float, path: str):
    started = time.time()
    with open(path, "a") as f:
        f.write(f"{started - sent_at:.6f}\n")
