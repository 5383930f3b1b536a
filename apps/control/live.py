"""Live task events for WebSockets, fed from RabbitMQ (no Redis, no channel layer).

Each web process runs one ``EventHub``: a thread that consumes Celery task events from its own
exclusive, auto-delete queue bound to the ``celeryev`` exchange. Every web process therefore receives
every event, and a WebSocket served by any of them sees all changes. The thread hands events to the
asyncio loop, which fans them out to the connected sockets' queues.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid

from kombu import Consumer, Queue, binding

from apps.control import ledger
from apps.control.recorder import event_exchange
from apps.core import cluster

logger = logging.getLogger(__name__)


def message_for(event: dict) -> dict | None:
    """What a client sees for one event: status, step, message, result or error."""
    state = ledger.state_for(event)
    if state is None:
        return None
    message = {"task_id": event.get("uuid"), "state": state, "event": event.get("type"),
               "timestamp": event.get("timestamp")}
    if event.get("type") == "task-progress":
        message.update(step=event.get("step"), message=event.get("message"), current=event.get("current"),
                       total=event.get("total"))
    if "result" in event:
        message["result"] = event.get("result")
    if "exception" in event:
        message["error"] = event.get("exception")
    if event.get("name"):
        message["name"] = event["name"]
    if event.get("queue"):  # task-sent says where it went
        message["queue"] = event["queue"]
    return message


class EventHub:
    def __init__(self, broker_url: str):
        self.broker_url = broker_url
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribers: set[asyncio.Queue] = set()
        self.ready = threading.Event()
        # The newest worker event (heartbeat, online) per hostname, for the operator console's workers
        # panel: last heartbeat, tasks running and processed, without a broadcast to every worker.
        self.workers: dict[str, dict] = {}
        self._thread: threading.Thread | None = None
        self.queue_name = f"control.live.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self.loop = loop
        self._thread = threading.Thread(target=self._run, name="control-live-events", daemon=True)
        self._thread.start()

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)

    def _dispatch(self, message: dict) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                pass  # a stalled client loses live updates, not the process; it can re-read the ledger

    def _on_message(self, body, message) -> None:
        for event in body if isinstance(body, list) else [body]:
            if isinstance(event, dict) and str(event.get("type", "")).startswith("worker-"):
                self._on_worker_event(event)
            elif isinstance(event, dict):
                out = message_for(event)
                if out is not None and self.loop is not None:
                    self.loop.call_soon_threadsafe(self._dispatch, out)
        message.ack()

    def _on_worker_event(self, event: dict) -> None:
        hostname = event.get("hostname")
        if not hostname:
            return
        if event["type"] == "worker-offline":
            self.workers.pop(hostname, None)
        else:
            self.workers[hostname] = {**event, "received_at": time.time()}

    def _run(self) -> None:
        exchange = event_exchange()
        queue = Queue(self.queue_name, exchange, exclusive=True, auto_delete=True, durable=False,
                      bindings=[binding(exchange, routing_key="task.#"), binding(exchange, routing_key="worker.#")],
                      queue_arguments={"x-message-ttl": 60_000})
        while True:
            try:
                with cluster.connection(self.broker_url, heartbeat=30) as connection:
                    connection.ensure_connection(max_retries=3)
                    with Consumer(connection, queues=[queue], callbacks=[self._on_message], accept=["json"],
                                  prefetch_count=500):
                        self.ready.set()
                        while True:
                            try:
                                connection.drain_events(timeout=1)
                            except socket.timeout:
                                connection.heartbeat_check()
            except Exception as exc:  # noqa: BLE001  (reconnect on anything the broker throws)
                self.ready.clear()
                logger.warning("Live event feed lost the broker (%s); reconnecting in 2 s", exc)
                time.sleep(2)


_hub: EventHub | None = None
_hub_lock = threading.Lock()


def hub() -> EventHub:
    global _hub
    from project.celery import app

    with _hub_lock:
        if _hub is None:
            _hub = EventHub(app.conf.broker_url)
        _hub.start(asyncio.get_running_loop())
        return _hub
