"""Tracing fixtures: a private RabbitMQ vhost with its own io (and cpu) worker, an OTLP receiver, a Sentry sink.

Private because the workers here need a collector endpoint and a Sentry DSN in their environment, and a
shared io worker in the same vhost (without them) could take the ingestion tasks.
"""
from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from apps.tracing import api
from apps.tracing.buffer import BufferedSpanProcessor
from apps.tracing.otel import PlatformSampler
from tests.support import rabbit
from tests.support.workers import Worker
from tests.tracing.receivers import OTLPReceiver, SentrySink


class FakePublisher:
    """Stands in for the broker in unit tests of the buffer: records batches, or fails while ``down``."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.down = False

    def __call__(self, batch):
        if self.down:
            raise ConnectionRefusedError("broker down (test)")
        self.batches.append(batch)

    @property
    def records(self) -> list[dict]:
        return [record for batch in self.batches for record in batch]


@pytest.fixture
def recorder(monkeypatch):
    """The recording API on a private provider whose buffer publishes to a FakePublisher."""
    publisher = FakePublisher()
    buffer = BufferedSpanProcessor(publisher, service="unit", max_events=50, flush_events=10,
                                   flush_bytes=64 * 1024, flush_interval=3600)
    provider = TracerProvider(sampler=PlatformSampler(["tracing.ingest"]))
    provider.add_span_processor(buffer)
    monkeypatch.setattr(api, "_tracer", provider.get_tracer("apps.tracing"))
    yield buffer, publisher
    buffer.shutdown()


@pytest.fixture(scope="module")
def otlp_receiver():
    receiver = OTLPReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def sentry_sink():
    sink = SentrySink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def tracing_stack(worker_db_url, otlp_receiver, sentry_sink):
    """A private vhost, the app pointed at it, an io worker (eventlet) and a cpu worker (prefork) on it."""
    from apps.tracing import otel
    from project.celery import app

    vhost = rabbit.create_vhost("platform-tracing-test")
    url = rabbit.vhost_url(vhost)
    previous = app.conf.broker_url
    rabbit.point_app_at(app, url)
    buffer = otel.setup(force=True)  # test settings leave tracing off unless TRACING_ENABLED=1
    env = {
        "TRACING_ENABLED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_receiver.port}",
        "SENTRY_DSN": sentry_sink.dsn,
        "SENTRY_ENVIRONMENT": "test",
        "TRACING_FLUSH_INTERVAL": "0.2",
        "IO_CONCURRENCY": "20",
        "CPU_CONCURRENCY": "1",
    }
    workers = [Worker("io", url, worker_db_url, env=env).start(), Worker("cpu", url, worker_db_url, env=env).start()]
    try:
        for worker in workers:
            worker.wait_ready()
        yield {"url": url, "io": workers[0], "cpu": workers[1], "buffer": buffer}
    finally:
        for worker in workers:
            worker.stop()
        buffer.flush()
        buffer.enabled = False  # later spans in this process must not go to another broker
        rabbit.point_app_at(app, previous)
        rabbit.delete_vhost(vhost)
