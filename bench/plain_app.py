"""Plain Celery, as the baseline: Celery with the platform's delivery settings (JSON, persistent
messages, acks_late, publisher confirms, prefetch multiplier 1, a quorum queue on a direct exchange)
and none of the platform's code: no result backend, no events, no ledger, no tracing, stock consumer.
Started as `celery -A bench.plain_app worker -P <pool> -Q plain`."""
import os
import time

from celery import Celery
from kombu import Exchange, Queue

# set_as_current=False: importing this next to the platform app must not rebind its shared tasks.
app = Celery("plain", broker=os.environ.get("PLAIN_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
             set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    broker_transport_options={"confirm_publish": True},
    task_queues=[Queue("plain", Exchange("plain", type="direct"), routing_key="plain", durable=True,
                       queue_arguments={"x-queue-type": "quorum"})],
    worker_prefetch_multiplier=1,
    worker_detect_quorum_queues=True,
    task_default_queue="plain",
    task_default_exchange="plain",
    task_default_routing_key="plain",
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    # Stock Celery 5.7 caps an eventlet worker at ~10 tasks/s while AMQP heartbeats are on (its green
    # loop waits 0.1 s on the event connection per frame; measured here: 17,208 -> 17,102 ready in 10 s).
    # bench/run.py turns heartbeats off for the plain eventlet baseline, the workaround a plain Celery
    # user would apply, so the baseline is a real ceiling. The platform fixes the loop instead
    # (apps/core/consumer.py) and keeps heartbeats.
    broker_heartbeat=int(os.environ.get("PLAIN_BROKER_HEARTBEAT", "120")),
)


@app.task(name="plain.noop")
def noop():
    return None


@app.task(name="plain.sleep")
def sleep(seconds):
    time.sleep(seconds)


@app.task(name="plain.sentinel")
def sentinel(path):
    with open(path, "w") as f:
        f.write(repr(time.time()))
