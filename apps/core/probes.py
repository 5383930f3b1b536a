"""Liveness and readiness files for worker probes (Kubernetes), so no probe runs `celery inspect`.

``celery inspect ping`` as a probe imports the whole app on every run and needs the broker, so a broker
outage restarts every healthy worker. Here the worker says it itself, in two files under
``PLATFORM_PROBE_DIR`` (unset: no files, the local stack and most tests):

* ``heartbeat``: touched every ``PLATFORM_HEARTBEAT_SECONDS`` from the worker's own timer (the hub's on
  prefork, a green timer on eventlet) while the consumer's connection is up and its channel consuming. A
  stuck event loop or a lost broker connection stops the touches; the file goes stale.
* ``ready``: written when the consumer's loop starts (connected, consuming), removed when the consumer
  stops or restarts (connection lost, shutdown).

``compose/probes/worker live|ready`` reads them; the manifests in compose/kubernetes/ call it.
"""
from __future__ import annotations

import os
from pathlib import Path

from celery import bootsteps
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer, Tasks
from django.conf import settings

logger = get_logger(__name__)

HEARTBEAT_FILE = "heartbeat"
READY_FILE = "ready"


def probe_dir() -> Path | None:
    return Path(settings.PLATFORM_PROBE_DIR) if settings.PLATFORM_PROBE_DIR else None


def consuming(c: Consumer) -> bool:
    """The consumer's connection is up and its task channel is open with queues to consume."""
    connection, task_consumer = c.connection, c.task_consumer
    if connection is None or task_consumer is None or not connection.connected:
        return False
    channel = task_consumer.channel
    return bool(task_consumer.queues) and channel is not None and getattr(channel, "is_open", True)


class ProbeFiles(bootsteps.StartStopStep):
    """Heartbeat and readiness files for the probes; a no-op without PLATFORM_PROBE_DIR."""

    requires = (Tasks,)
    _timer = None
    _loop_running = False

    def __init__(self, c: Consumer, **kwargs):
        super().__init__(c, **kwargs)
        self.directory = probe_dir()
        c.probe_files = self  # PlatformConsumer.on_ready tells us when the loop runs

    def start(self, c: Consumer) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._timer = c.timer.call_repeatedly(settings.PLATFORM_HEARTBEAT_SECONDS, self.beat, (c,))

    def loop_started(self, c: Consumer) -> None:
        """Called by the consumer when its loop starts: connected, consuming, ready for tasks."""
        if self.directory is None:
            return
        self._loop_running = True
        self.beat(c)
        self._write(READY_FILE)

    def beat(self, c: Consumer) -> None:
        if self._loop_running and consuming(c):
            self._write(HEARTBEAT_FILE)

    def stop(self, c: Consumer) -> None:
        self._loop_running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.directory is not None:
            (self.directory / READY_FILE).unlink(missing_ok=True)

    shutdown = stop

    def _write(self, name: str) -> None:
        # Write-then-rename: a probe never reads a half-written file; the rename also sets the mtime.
        path = self.directory / name
        temporary = path.with_name(f".{name}.{os.getpid()}")
        try:
            temporary.write_text(f"{os.getpid()}\n")
            temporary.replace(path)
        except OSError:  # a full or read-only disk must not stop the worker: the probe will say it
            logger.warning("could not write probe file %s", path, exc_info=True)
