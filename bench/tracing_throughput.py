"""Tracing benchmark: recording cost in the caller, and sustained events/s from recording to stored.

    DJANGO_SETTINGS_MODULE=project.settings.test .venv/bin/python bench/tracing_throughput.py [--events 50000]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/platform ... (same, on a scratch PostgreSQL database)

What it does, all in one run on this machine (same-run baselines, reported as ratios):
1. Recording cost per call (µs) in the caller: ``tracing.span()``, ``@tracing.traced``, ``tracing.audit()``,
   isolated (publish is a no-op, no worker) and with the pipeline running (flusher publishing, worker
   ingesting on the same cores); baselines: a bare OpenTelemetry SDK span with no processor, a dict append.
2. Sustained throughput: ``--recorders`` processes (default 2; a deployment records from many web and worker
   processes) together record N operation spans with ``tracing.span()`` as fast as they can; their buffers
   publish batches to a scratch RabbitMQ vhost; a real eventlet io worker (compose/start/io) ingests them into a
   scratch database. events/s = N / (the recorders' first ``span()`` -> last row stored). Recorder processes
   are spawned and set up (Django, broker connection) before the clock starts; ``--recorders 1`` records in
   this process, as the benchmark did before it had the option.
   Baselines: raw kombu publish of the same batches (JSON, persistent, publisher confirms, no consumer),
   and ``services.ingest_batch`` of the same batches called directly in this process (the database alone).
Prints a JSON report; --json-out writes it to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import scratch_database  # noqa: E402
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.test")
os.environ["TRACING_ENABLED"] = "1"
os.environ.setdefault("TRACING_BUFFER_MAX_EVENTS", "1000000")  # measure throughput, not the outage bound
os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
os.environ.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)


def per_call_us(function, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        function(i)
    return (time.perf_counter() - start) / calls * 1e6


def recording_cost(calls: int) -> dict:
    from opentelemetry.sdk.trace import TracerProvider

    from apps.tracing import api as tracing

    bare = TracerProvider().get_tracer("bench")

    def bare_span(i):
        with bare.start_as_current_span("bench.bare", attributes={"i": i, "kind": "bench"}):
            pass

    items = []

    def dict_append(i):
        items.append({"name": "bench", "i": i})

    def span(i):
        with tracing.span("bench.span", i=i, kind="bench"):
            pass

    @tracing.traced("bench.traced")
    def traced(i):
        return i

    def audit(i):
        tracing.audit("bench.audit", actor="user:1", target=f"item:{i}")

    per_call_us(span, 2000)  # warm up: imports, first flush thread start
    result = {
        "baseline_dict_append_us": per_call_us(dict_append, calls),
        "baseline_bare_otel_span_us": per_call_us(bare_span, calls),
        "span_us": per_call_us(span, calls),
        "traced_us": per_call_us(traced, calls),
        "audit_us": per_call_us(audit, calls),
    }
    result["span_vs_bare_otel_ratio"] = result["span_us"] / result["baseline_bare_otel_span_us"]
    return result


def _recorder(index: int, count: int, url: str, batch: int, flush_bytes: int, ready, go, results) -> None:
    """One recording process (spawned): set up like any platform process, then record ``count`` spans."""
    import django

    django.setup()
    from django.conf import settings

    settings.TRACING_FLUSH_EVENTS = batch
    settings.TRACING_FLUSH_BYTES = flush_bytes
    from apps.tracing import api as tracing
    from apps.tracing import otel
    from project.celery import app

    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None
    buffer = otel.setup()
    # The buffer exists since django.setup() (TracingConfig.ready), built before the settings above: size it here.
    buffer._flush_events, buffer._flush_bytes = batch, flush_bytes
    with tracing.span("warm.op"):  # connects to the broker before the clock starts
        pass
    buffer.flush()
    ready.put(index)
    go.wait()
    start = time.perf_counter()
    for i in range(count):
        with tracing.span("load.op", i=i, user="user:42", path="/orders/42"):
            pass
    recorded = time.perf_counter()
    buffer.flush()
    results.put({"index": index, "count": count, "start": start, "recorded": recorded,
                 "flushed": time.perf_counter(), "published": buffer.published, "dropped": buffer.dropped,
                 "cpu_s": time.process_time()})


def record_in_processes(recorders: int, events: int, url: str, batch: int, flush_bytes: int, timeout: float):
    """Spawn the recorders, wait until each is set up, start them together; returns (clock start, results)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of this process's threads (flusher, kombu)
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    shares = [events // recorders + (1 if i < events % recorders else 0) for i in range(recorders)]
    processes = [context.Process(target=_recorder, args=(i, shares[i], url, batch, flush_bytes, ready, go, results),
                                 daemon=True) for i in range(recorders)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    start = time.perf_counter()  # perf_counter is CLOCK_MONOTONIC: comparable across processes on this host
    go.set()
    outcome = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return start, outcome


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events recorded for the throughput run")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per recording-cost measurement")
    parser.add_argument("--io-concurrency", default="20")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--batch", type=int, default=2000, help="events per batch (TRACING_FLUSH_EVENTS)")
    parser.add_argument("--recorders", type=int, default=2,
                        help="processes recording the sustained run's spans (1: this process, as before)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    db_url, drop_db = scratch_database("tracing")
    os.environ["DATABASE_URL"] = db_url
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from kombu import Connection

    from apps.tracing import api as tracing
    from apps.tracing import otel, services
    from apps.tracing.models import TraceEvent
    from project.celery import app
    from tests.support import rabbit
    from tests.support.workers import Worker

    from django.conf import settings

    settings.TRACING_FLUSH_EVENTS = args.batch
    settings.TRACING_FLUSH_BYTES = max(2 * 1024 * 1024, args.batch * 1000)
    try:
        call_command("migrate", verbosity=0)
        vhost = rabbit.create_vhost("platform-bench-tracing")
    except BaseException:
        connection.close()
        drop_db()  # nothing else exists yet; the scratch database must not outlive a failed start
        raise
    url = rabbit.vhost_url(vhost)
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None
    buffer = otel.setup()
    # Built by TracingConfig.ready() inside django.setup(), before the settings above were set: --batch sizes
    # the buffer's batches here (it applied only to the baselines' batches before).
    buffer._flush_events, buffer._flush_bytes = settings.TRACING_FLUSH_EVENTS, settings.TRACING_FLUSH_BYTES
    worker = None
    report: dict = {"events": args.events, "batch": args.batch, "recorders": args.recorders,
                    "database": connection.vendor, "cpus": os.cpu_count(),
                    "load_average_before": os.getloadavg()}
    try:
        # Isolated: the buffer's publish is a no-op, no worker runs: the caller's own cost.
        real_publish = buffer._publish
        buffer._publish = lambda batch: None
        report["recording_isolated"] = recording_cost(args.calls)
        buffer.flush()
        buffer._publish = real_publish
        worker = Worker("io", url, db_url, env={"IO_CONCURRENCY": args.io_concurrency, "TRACING_ENABLED": "1",
                                                 "LOG_LEVEL": "WARNING"}).start()
        worker.wait_ready(timeout=120)  # assigned first, so the finally block stops it if it never answers
        # With the pipeline: the flusher publishes to RabbitMQ and the worker ingests, on the same 2 cores.
        before = buffer.published
        report["recording_with_pipeline"] = recording_cost(args.calls)
        buffer.flush()
        wait_until = time.monotonic() + args.timeout
        while TraceEvent.objects.filter(name__startswith="bench.").count() < buffer.published - before \
                and time.monotonic() < wait_until:
            time.sleep(0.2)
        TraceEvent.objects.all().delete()

        # --- sustained: record -> buffer -> broker -> eventlet worker -> database --------------------
        published_before = buffer.published
        if args.recorders > 1:
            start, outcome = record_in_processes(args.recorders, args.events, url, args.batch,
                                                 settings.TRACING_FLUSH_BYTES, args.timeout)
            recorded = max(result["recorded"] for result in outcome)
            flushed = max(result["flushed"] for result in outcome)
            published = sum(result["published"] for result in outcome) - args.recorders  # less the warm-up spans
            dropped = sum(result["dropped"] for result in outcome)
            report["recorder_processes"] = [
                {"recorded_per_s": r["count"] / (r["recorded"] - r["start"]), "seconds_recording": r["recorded"] - r["start"],
                 "cpu_s_including_setup": r["cpu_s"]} for r in outcome]
        else:
            start = time.perf_counter()
            for i in range(args.events):
                with tracing.span("load.op", i=i, user="user:42", path="/orders/42"):
                    pass
            recorded = time.perf_counter()
            buffer.flush()
            flushed = time.perf_counter()
            published, dropped = buffer.published - published_before, buffer.dropped
        expected = args.events
        stored = 0
        while time.monotonic() < wait_until:
            stored = TraceEvent.objects.filter(name="load.op").count()
            if stored >= expected:
                break
            time.sleep(0.05)
        done = time.perf_counter()
        report["sustained"] = {
            "recorders": args.recorders,
            "recorded_per_s": expected / (recorded - start),
            "published_events": published,
            "dropped": dropped,
            "stored": stored,
            "seconds_first_record_to_last_stored": done - start,
            "seconds_recording": recorded - start,
            "seconds_final_flush": flushed - recorded,
            "events_per_s_recorded_to_stored": stored / (done - start),
        }

        # --- baselines on the same batches -----------------------------------------------------------
        rows = list(TraceEvent.objects.filter(name="load.op").order_by("id")[:expected])
        batches, batch = [], []
        for row in rows:
            batch.append({"trace_id": uuid.uuid4().hex, "span_id": row.span_id, "parent_span_id": "",
                          "name": "baseline.op", "kind": row.kind, "span_kind": row.span_kind, "service": row.service,
                          "scope": row.scope, "start_ns": row.start_ns, "end_ns": row.end_ns, "status": row.status,
                          "status_message": "", "attributes": row.attributes, "events": []})
            if len(batch) == args.batch:
                batches.append(batch)
                batch = []
        if batch:
            batches.append(batch)
        bodies = [json.dumps([[b, uuid.uuid4().hex], {}, {}]) for b in batches]
        with Connection(url, transport_options={"confirm_publish": True}) as conn:
            channel = conn.channel()
            # A quorum queue like ops_trace: its confirms wait for a Raft commit, which is the real cost.
            channel.queue_declare(queue="bench_raw", durable=True, auto_delete=False,
                                  arguments={"x-queue-type": "quorum"})
            producer = conn.Producer(channel)
            t0 = time.perf_counter()
            for body in bodies:
                producer.publish(body, routing_key="bench_raw", delivery_mode=2, serializer=None,
                                 content_type="application/json", content_encoding="utf-8")
            raw_seconds = time.perf_counter() - t0
            channel.queue_delete(queue="bench_raw")
        # Ingestion only: the same batches published as tracing.ingest tasks; the worker drains them.
        from apps.tracing.tasks import ingest

        # Encoded as the buffer sends them (one JSON text per batch, otel.publish_batch), outside the clock.
        renamed = [otel.encode_batch([{**r, "name": "ingest.op", "trace_id": uuid.uuid4().hex} for r in b])
                   for b in batches]
        t0 = time.perf_counter()
        for b in renamed:
            ingest.apply_async(args=(b, uuid.uuid4().hex), ignore_result=True, argsrepr="[<batch>]")
        publish_seconds = time.perf_counter() - t0
        while TraceEvent.objects.filter(name="ingest.op").count() < expected and time.monotonic() < wait_until:
            time.sleep(0.05)
        worker_seconds = time.perf_counter() - t0
        worker.stop()
        worker = None
        t0 = time.perf_counter()
        for b in batches:
            services.ingest_batch(b, uuid.uuid4().hex)
        direct_seconds = time.perf_counter() - t0
        n = sum(len(b) for b in batches)
        report["baselines"] = {
            "raw_kombu_publish_confirmed_events_per_s": n / raw_seconds,
            "raw_kombu_publish_batches_per_s": len(bodies) / raw_seconds,
            "direct_ingest_batch_events_per_s": n / direct_seconds,
        }
        report["ingestion_only"] = {"events_per_s_published_to_stored_by_worker": n / worker_seconds,
                                    "events_per_s_publishing_ingest_tasks": n / publish_seconds}
        sustained = report["sustained"]["events_per_s_recorded_to_stored"]
        report["ratios"] = {
            "pipeline_vs_raw_publish": sustained / report["baselines"]["raw_kombu_publish_confirmed_events_per_s"],
            "pipeline_vs_direct_ingest": sustained / report["baselines"]["direct_ingest_batch_events_per_s"],
            "worker_ingestion_vs_direct_ingest": report["ingestion_only"]["events_per_s_published_to_stored_by_worker"]
            / report["baselines"]["direct_ingest_batch_events_per_s"],
        }
        report["load_average_after"] = os.getloadavg()
    finally:
        buffer.enabled = False
        if worker is not None:
            worker.stop()
        app.conf.broker_url = "amqp://unused"
        rabbit.delete_vhost(vhost)
        connection.close()
        drop_db()
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (worker, vhost, database)
    main()
