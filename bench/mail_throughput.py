"""Mail delivery throughput on the eventlet io worker, as a ratio of the same worker's no-op drain rate.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/platform .venv/bin/python bench/mail_throughput.py -c 200
    .venv/bin/python bench/mail_throughput.py -c 200            # SQLite (a fresh file under var/)

What it does, all in one run against a throwaway RabbitMQ vhost and a throwaway database:
  1. starts an SMTP server (aiosmtpd) that waits --smtp-delay (100 ms) before accepting each message;
  2. starts one io worker (compose/start/io, -P eventlet -c N) pointed at it;
  3. baseline: N no-op tasks (mail.probe, result stored) published while the worker does not consume
     the queue, then the consumer is added and the drain is timed until every result is SUCCESS;
  4. the same for --messages bulk messages (mail.bulk_send_message on mail_bulk) until all are SENT,
     and the same for transactional ones (mail.send_message on mail, result stored);
  5. samples PostgreSQL connections to the database during the run (peak), and reports the time
     between the SMTP server's acceptance and the SENT commit (the at-most-once window).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import scratch_database  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=200)
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("--baseline-messages", type=int, default=None,
                        help="no-op tasks for the baseline drain (default: --messages)")
    parser.add_argument("--smtp-delay", type=float, default=0.1, help="seconds the SMTP server waits per message")
    parser.add_argument("--pool", type=int, default=30, help="IO_DB_POOL_MAX_SIZE (PostgreSQL)")
    parser.add_argument("--skip-transactional", action="store_true")
    parser.add_argument("--lanes", default="bulk,batched,transactional",
                        help="bulk: one task per message (enqueue); batched: enqueue_bulk, MAIL_BULK_BATCH_SIZE "
                             "messages per task; transactional: mail.send_message, result stored")
    parser.add_argument("--batch-size", type=int, default=None, help="MAIL_BULK_BATCH_SIZE for the batched lane")
    parser.add_argument("--peer", default="2x5x100,2x50x1000",
                        help="django-post-office runs, PROCESSESxTHREADSxBATCH each (comma-separated; '' for none): "
                             "its defaults are 1 process, 5 threads, batches of 100")
    return parser.parse_args()


class SlowAcceptingHandler:
    def __init__(self, delay: float, received=None):
        self.delay = delay
        self.count = 0
        self.received = received  # a shared counter: the bench checks every message arrived once

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        self.count += 1
        if self.received is not None:
            with self.received.get_lock():
                self.received.value += 1
        return f"250 2.0.0 Ok: queued as BENCH{self.count}"


def serve_smtp(port: int, delay: float, ready, received) -> None:
    """The SMTP server, in a process of its own: in the bench's process its event loop shared the GIL with
    Django's polling, which slowed the server's replies down under load."""
    import signal

    from aiosmtpd.controller import Controller

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before the server's thread: sigwait takes it
    controller = Controller(SlowAcceptingHandler(delay, received), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    signal.sigwait({signal.SIGTERM})
    controller.stop()


class SmtpProcess:
    def __init__(self, port: int, delay: float):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.port, ready, self.received = port, context.Event(), context.Value("q", 0)
        self.process = context.Process(target=serve_smtp, args=(port, delay, ready, self.received), daemon=True)
        self.process.start()
        if not ready.wait(30):
            raise SystemExit("the bench SMTP server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


class ConnectionSampler(threading.Thread):
    """Peak connections to the bench database (PostgreSQL), excluding this process's own."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.peak, self.stop_event = url, 0, threading.Event()

    def run(self):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND application_name <> 'bench-sampler' AND pid <> pg_backend_pid()").fetchone()[0]
                self.peak = max(self.peak, n)
                time.sleep(0.05)

    def reset(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


def post_office(spec: str, messages: int, db_url: str, smtp_port: int) -> dict:
    """django-post-office's send_queued_mail on the same database server and SMTP server (bench/post_office_peer.py)."""
    import json
    import subprocess

    processes, threads, batch = (int(x) for x in spec.split("x"))
    env = {**os.environ, "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "bench.post_office_settings",
           "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp_port), "POST_OFFICE_THREADS": str(threads),
           "POST_OFFICE_BATCH_SIZE": str(batch)}
    env.pop("CELERY_BROKER_URL", None)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "post_office_peer.py"), str(messages), str(processes)],
                         env=env, capture_output=True, text=True, timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    db_url, drop_database = scratch_database("mail")
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.test"
    if args.batch_size:  # enqueue_bulk cuts the batches in this process
        os.environ["MAIL_BULK_BATCH_SIZE"] = str(args.batch_size)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django_celery_results.models import TaskResult

    from apps.mail import services
    from apps.mail.models import Message, Status
    from apps.mail.tasks import bulk_send_message, probe, send_message
    from project.celery import app
    from tests.mail.smtp_servers import free_port
    from tests.support import rabbit
    from tests.support.workers import Worker

    try:
        call_command("migrate", verbosity=0)
        vhost = rabbit.create_vhost("bench-mail")
    except BaseException:
        connection.close()
        drop_database()
        raise
    broker_url = rabbit.vhost_url(vhost)
    app.conf.broker_url = broker_url
    app._pool = None
    app.amqp._producer_pool = None
    smtp = SmtpProcess(free_port(), args.smtp_delay)
    pg = connection.vendor == "postgresql"
    sampler = ConnectionSampler(db_url.replace("postgres://", "postgresql://") + "?application_name=bench-sampler") \
        if pg else None
    worker = Worker("io", broker_url, db_url, env={
        "IO_CONCURRENCY": str(args.concurrency), "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp.port),
        "MAIL_DOMAIN_RATE": "0", "IO_DB_POOL_MAX_SIZE": str(args.pool),
        **({"MAIL_BULK_BATCH_SIZE": str(args.batch_size)} if args.batch_size else {}), "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    })
    results = {}
    try:
        worker.start().wait_ready(timeout=120)
        if sampler:
            sampler.start()

        baseline = args.baseline_messages or args.messages

        def drain(queue: str, publish, done, expected: int = args.messages) -> float:
            app.control.cancel_consumer(queue, destination=[worker.nodename], reply=True)
            publish()
            time.sleep(1)
            if sampler:
                sampler.reset()
            started = time.monotonic()
            app.control.add_consumer(queue, destination=[worker.nodename], reply=True)
            while done() < expected:
                if not worker.alive():
                    raise SystemExit(f"worker died:\n{worker.log()[-3000:]}")
                time.sleep(0.05)
            return expected / (time.monotonic() - started)

        def publish_tasks(task, ids):
            with app.producer_or_acquire() as producer:
                for pk in ids:
                    task.apply_async((pk,), producer=producer)

        probe_ids = []

        def publish_probes():
            with app.producer_or_acquire() as producer:
                probe_ids.extend(probe.apply_async(producer=producer).id for _ in range(baseline))

        results["noop"] = drain("mail", publish_probes,
                                lambda: TaskResult.objects.filter(task_id__in=probe_ids, status="SUCCESS").count(), baseline)
        results["noop_peak_db"] = sampler.reset() if sampler else None

        def make_messages(bulk: bool) -> list[int]:
            tag = uuid.uuid4().hex[:6]
            Message.objects.bulk_create([
                Message(idempotency_key=f"bench-{tag}-{i}", bulk=bulk, from_email="bench@example.com",
                        to=[f"user{i}@d{i % 50}.example.com"], subject=f"bench {i}", body_text="hello " * 20)
                for i in range(args.messages)
            ], batch_size=1000)
            return list(Message.objects.filter(idempotency_key__startswith=f"bench-{tag}-").values_list("pk", flat=True))

        wanted = [lane for lane in args.lanes.split(",") if lane]
        if args.skip_transactional and "transactional" in wanted:
            wanted.remove("transactional")
        lanes = [lane for lane in (("bulk", True, bulk_send_message, "mail_bulk"),
                                   ("batched", True, None, "mail_bulk"),
                                   ("transactional", False, send_message, "mail")) if lane[0] in wanted]
        for label, bulk, task, queue in lanes:
            ids = []

            def publish(bulk=bulk, task=task, ids=ids):
                if task is None:  # the way in for a newsletter: one call, batches of MAIL_BULK_BATCH_SIZE
                    tag = uuid.uuid4().hex[:6]
                    stored = services.enqueue_bulk(
                        dict(idempotency_key=f"bench-{tag}-{i}", from_email="bench@example.com",
                             to=[f"user{i}@d{i % 50}.example.com"], subject=f"bench {i}", body="hello " * 20)
                        for i in range(args.messages))
                    ids.extend(message.pk for message, _ in stored)
                    return
                ids.extend(make_messages(bulk))
                publish_tasks(task, ids)

            # Counted by id range: an IN list of every id, every 50 ms, cost the bench more than the count.
            results[label] = drain(queue, publish, lambda ids=ids: Message.objects.filter(
                pk__gte=min(ids), pk__lte=max(ids), status=Status.SENT).count())
            results[f"{label}_peak_db"] = sampler.reset() if sampler else None
            rows = sorted(Message.objects.filter(pk__gte=min(ids), pk__lte=max(ids)).values_list(
                "smtp_accepted_at", "sent_at"))
            windows = [(sent_at - accepted).total_seconds() * 1000 for accepted, sent_at in rows]
            tenths = [sorted(windows[i * len(windows) // 10:(i + 1) * len(windows) // 10]) for i in range(10)]
            results[f"{label}_window_p99_by_tenth"] = [round(t[int(len(t) * .99) - 1]) if t else None for t in tenths]
            results[f"{label}_window_ms"] = (statistics.median(windows), sorted(windows)[int(len(windows) * .99) - 1],
                                             max(windows))
        for spec in filter(None, args.peer.split(",")):
            results[f"post_office {spec}"] = post_office(spec, args.messages, db_url, smtp.port)
        sent = len(lanes) * args.messages + sum(r["sent"] for k, r in results.items() if k.startswith("post_office"))
        results["received"], results["expected"] = smtp.received.value, sent
    finally:
        if sampler:
            sampler.stop_event.set()
        worker.stop()
        smtp.stop()
        rabbit.delete_vhost(vhost)
        connection.close()
        drop_database()

    load = open("/proc/loadavg").read().split()[:3]
    print(f"database={connection.vendor} -c {args.concurrency} messages={args.messages} "
          f"smtp_delay={args.smtp_delay * 1000:.0f}ms db_pool={args.pool if pg else '-'} "
          f"batch={settings.MAIL_BULK_BATCH_SIZE} loadavg={' '.join(load)}")
    print(f"no-op drain (mail.probe, results stored): {results['noop']:.1f} tasks/s"
          + (f", peak DB connections {results['noop_peak_db']}" if pg else ""))
    print(f"SMTP server received {results['received']} messages; sent {results['expected']} "
          + ("(each once)" if results["received"] == results["expected"] else "(MISMATCH)"))
    for label, peer in results.items():
        if label.startswith("post_office"):
            print(f"{label:<13} (peer): {peer['per_second']:.1f} msg/s ({peer['sent']} of {peer['messages']} sent in "
                  f"{peer['seconds']} s; {peer['processes']} processes x {peer['threads_per_process']} threads, "
                  f"batches of {peer['batch_size']})")
    for label in ("bulk", "batched", "transactional"):
        if label in results:
            p50, p99, worst = results[f"{label}_window_ms"]
            print(f"{label:<13} delivery: {results[label]:.1f} msg/s = {results[label] / results['noop']:.2f} x no-op"
                  + (f", peak DB connections {results[f'{label}_peak_db']}" if pg else "")
                  + f"; accepted->SENT commit p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms; p99 by tenth "
                  f"of the run (ms): {results[f'{label}_window_p99_by_tenth']}")

    if results["received"] != results["expected"]:
        raise SystemExit("the SMTP server did not receive every message exactly once")


if __name__ == "__main__":
    main()
