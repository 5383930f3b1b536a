"""The caller-side buffer: finished spans wait in memory and leave in batches, from a background thread.

Recording a span costs the caller an append to a deque (plus OpenTelemetry's own span bookkeeping).
A daemon thread (a green thread under eventlet) wakes when ``flush_events`` spans are waiting or every
``flush_interval`` seconds, turns the spans into records (apps/tracing/records.py), cuts them into
batches of at most ``flush_events`` records and ``flush_bytes`` bytes of JSON, and publishes each batch
as one ``tracing.ingest`` task. No database is touched in the recording process.

When the broker is down, publishing raises: the batch is kept and retried at the next flush. The
buffer is bounded (``max_events``, waiting spans plus kept batches): once full, new spans are dropped
and counted in ``dropped`` (logged once per flush), so an outage costs memory up to the bound and
never blocks or slows the caller. Dropping the newest keeps the events that were recorded first.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from apps.core.amqp import MessageTooLarge

from apps.tracing.records import estimated_size, from_span

logger = logging.getLogger(__name__)


class BufferedSpanProcessor(SpanProcessor):
    def __init__(self, publish: Callable[[list[dict]], None], service: str, max_events: int = 20_000,
                 flush_events: int = 2000, flush_bytes: int = 2 * 1024 * 1024, flush_interval: float = 1.0):
        self._publish = publish
        self._service = service
        self._max_events = max_events
        self._flush_events = flush_events
        self._flush_bytes = flush_bytes
        self._flush_interval = flush_interval
        self._spans: collections.deque[ReadableSpan] = collections.deque()  # append/popleft are thread-safe
        self._kept: collections.deque[list[dict]] = collections.deque()  # batches whose publish failed
        self._kept_events = 0
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._stopped = False
        self.enabled = True  # False: spans are ignored (a test process that is done with tracing)
        self.dropped = 0  # spans refused because the buffer was full
        self.published = 0  # records handed to the broker
        self.publish_failures = 0
        self._dropped_logged = 0

    # --- the caller's path: keep it tiny ------------------------------------------------------------
    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not self.enabled:
            return
        if self._pid != os.getpid():  # first span in this process, or in a forked child
            self._start_thread()
        if len(self._spans) + self._kept_events >= self._max_events or self._stopped:
            self.dropped += 1
            return
        self._spans.append(span)
        if len(self._spans) >= self._flush_events:
            self._wake.set()

    # --- the flusher ---------------------------------------------------------------------------------
    def _start_thread(self) -> None:
        with self._flush_lock:
            if self._pid == os.getpid():
                return
            if self._pid is not None:  # forked: the parent's spans and kept batches are the parent's
                self._spans.clear()
                self._kept.clear()
                self._kept_events = 0
            self._wake = threading.Event()
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="tracing-buffer", daemon=True).start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the flusher must outlive any bug in a span it converts
                logger.exception("tracing buffer flush failed")

    def _batches(self, spans: list[ReadableSpan]) -> list[list[dict]]:
        batches, batch, size = [], [], 2
        for span in spans:
            record = from_span(span, self._service)
            record_size = estimated_size(record) + 1
            if batch and (len(batch) >= self._flush_events or size + record_size > self._flush_bytes):
                batches.append(batch)
                batch, size = [], 2
            batch.append(record)
            size += record_size
        if batch:
            batches.append(batch)
        return batches

    def flush(self) -> bool:
        """Publish everything waiting; True when nothing is left (all published)."""
        with self._flush_lock:
            spans = [self._spans.popleft() for _ in range(len(self._spans))]
            for batch in self._batches(spans):
                self._kept.append(batch)
                self._kept_events += len(batch)
            while self._kept:
                batch = self._kept[0]
                try:
                    self._publish(batch)
                except MessageTooLarge as exc:  # the size estimate was too low (e.g. much non-ASCII text)
                    self._kept.popleft()
                    if len(batch) == 1:
                        self._kept_events -= 1
                        self.dropped += 1
                        logger.error("tracing: dropped one event too large to publish: %s", exc)
                    else:
                        half = len(batch) // 2
                        self._kept.extendleft([batch[half:], batch[:half]])
                    continue
                except Exception as exc:  # broker down, connection reset: keep the batch for the next flush
                    self.publish_failures += 1
                    logger.warning("tracing: could not publish a batch of %d events (%s); %d events kept, "
                                   "retrying in %.1fs", len(batch), exc, self._kept_events, self._flush_interval)
                    break
                self._kept.popleft()
                self._kept_events -= len(batch)
                self.published += len(batch)
            if self.dropped != self._dropped_logged:
                logger.warning("tracing: buffer full (%d events); %d events dropped so far",
                               self._max_events, self.dropped)
                self._dropped_logged = self.dropped
            return not self._kept and not self._spans

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.flush()

    def shutdown(self) -> None:
        self.flush()
        self._stopped = True
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._spans) + self._kept_events
