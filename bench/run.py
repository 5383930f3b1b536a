"""The benchmark suite: one command, one run, every figure next to its same-run baseline.

    .venv/bin/python bench/run.py            # full size (a few minutes), writes docs/benchmarks.md + bench/results.json
    .venv/bin/python bench/run.py --size tiny --out /tmp/bench   # seconds; what the test suite runs

Each measurement gets a fresh RabbitMQ vhost. Baselines: raw kombu (persistent, publisher confirms,
quorum queue like ours) and plain Celery (bench/plain_app.py: stock Celery + JSON, acks_late, confirms,
quorum queue, no result backend); the peer: Dramatiq, stock (bench/dramatiq_app.py). Workers are real
processes started from compose/start/<role> (platform), `celery -A bench.plain_app worker` (plain) or the
`dramatiq` command (peer).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.bench"
os.environ.setdefault("DATABASE_URL", f"sqlite:///{ROOT / 'var' / 'bench.sqlite3'}")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/platform_bench")

import django  # noqa: E402

django.setup()

from kombu import Connection, Exchange, Queue  # noqa: E402

from apps.core import single  # noqa: E402
from apps.core.bulk import enqueue_many  # noqa: E402
from bench import tasks as bench_tasks  # noqa: E402
from project.celery import app  # noqa: E402
from tests.support import rabbit  # noqa: E402
from tests.support.workers import ProcessRole, Worker, wait_for  # noqa: E402

SIZES = {
    "tiny": {"publish": 50, "drain": 200, "io_drain": 200, "latency": 10, "sleep": 50, "sleep_c500": 100},
    "full": {"publish": 3000, "drain": 10000, "io_drain": 20000, "latency": 500, "sleep": 3000, "sleep_c500": 10000},
}
BODY = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


class Vhost:
    def __enter__(self):
        self.name = rabbit.create_vhost("platform-bench")
        self.url = rabbit.vhost_url(self.name)
        app.conf.broker_url = self.url
        app._pool = None
        app.amqp._producer_pool = None
        return self

    def __exit__(self, *exc):
        rabbit.delete_vhost(self.name)


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def ready_count(url: str, queue: str) -> int:
    return rabbit.queue_message_count(url, queue)


def timed_drain(url: str, queue: str, total: int, start, sentinel_path: Path) -> float:
    """``total`` messages and then a sentinel are waiting; start the consumer; time from the first message
    taken to the sentinel's run (it writes its wall-clock time to ``sentinel_path``)."""
    process = start()
    try:
        wait_for(lambda: ready_count(url, queue) <= total, timeout=120, interval=0.002, message="draining to start")
        began = time.time()
        wait_for(sentinel_path.exists, timeout=900, interval=0.02, message="the sentinel to run")
        time.sleep(0.05)
        return rate(total, float(sentinel_path.read_text()) - began)
    finally:
        process.stop()


def sentinel_file() -> Path:
    return Path(tempfile.mkdtemp()) / "sentinel"


# --- raw broker ----------------------------------------------------------------------------------
def raw_queue():
    return Queue("raw", Exchange("raw", type="direct"), routing_key="raw", durable=True,
                 queue_arguments={"x-queue-type": "quorum"})


def raw_consume(n: int) -> float:
    with Vhost() as vhost, Connection(vhost.url) as conn:
        queue = raw_queue()(conn.default_channel)
        queue.declare()
        producer = conn.Producer()
        for _ in range(n):
            producer.publish(BODY, exchange="raw", routing_key="raw", delivery_mode=2,
                             content_type="application/json", content_encoding="utf-8")
        consumed = 0

        def on_message(body, message):
            nonlocal consumed
            message.ack()
            consumed += 1

        with conn.Consumer(queue, callbacks=[on_message], prefetch_count=100, accept=["json"]):
            began = time.monotonic()
            while consumed < n:
                conn.drain_events(timeout=10)
        return rate(n, time.monotonic() - began)


# --- plain Celery ----------------------------------------------------------------------------------
class Background:
    """A worker command in its own session, output to var/<log>, stopped with its whole process group."""

    def __init__(self, argv: list[str], env: dict, log: str):
        env = {**os.environ, **env}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log = open(ROOT / "var" / log, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self):
        import signal
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def plain_worker(url: str, pool: str, concurrency: int) -> Background:
    return Background([str(ROOT / ".venv" / "bin" / "celery"), "-A", "bench.plain_app", "worker", "-P", pool,
                       "-c", str(concurrency), "-Q", "plain", "-l", "WARNING", "--without-mingle", "--without-gossip"],
                      {"PLAIN_BROKER_URL": url, "PLAIN_BROKER_HEARTBEAT": "0" if pool == "eventlet" else "120"},
                      f"bench-plain-{pool}-{concurrency}.log")


def plain_drain(n: int, pool: str, concurrency: int, task: str = "plain.noop", args=()) -> float:
    with Vhost() as vhost:
        from bench import plain_app
        plain_app.app.conf.broker_url = vhost.url
        plain_app.app._pool = None
        plain_app.app.amqp._producer_pool = None
        sentinel = sentinel_file()
        with plain_app.app.connection_for_write() as conn:
            producer = plain_app.app.amqp.Producer(conn)
            for _ in range(n):
                plain_app.app.send_task(task, args=args, producer=producer)
            plain_app.app.send_task("plain.sentinel", args=(str(sentinel),), producer=producer)
        return timed_drain(vhost.url, "plain", n, lambda: plain_worker(vhost.url, pool, concurrency), sentinel)


# --- the peer: Dramatiq ---------------------------------------------------------------------------
def dramatiq_worker(url: str, processes: int, threads: int) -> Background:
    return Background([str(ROOT / ".venv" / "bin" / "dramatiq"), "bench.dramatiq_app", "--processes", str(processes),
                       "--threads", str(threads), "--queues", "peer"],
                      {"DRAMATIQ_BROKER_URL": url}, f"bench-dramatiq-{processes}x{threads}.log")


class DramatiqSender:
    """Publishes to the Dramatiq worker by actor name from a broker of its own (stock: no confirms)."""

    def __init__(self, url: str):
        import logging

        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        logging.getLogger("pika").setLevel(logging.WARNING)  # INFO logs every connection open and close
        self.broker = RabbitmqBroker(url=url)
        self.broker.declare_queue("peer")

    def send(self, actor: str, *args) -> None:
        import dramatiq

        self.broker.enqueue(dramatiq.Message(queue_name="peer", actor_name=actor, args=args, kwargs={}, options={}))

    def close(self) -> None:
        self.broker.close()


def dramatiq_drain(n: int, processes: int, threads: int) -> float:
    with Vhost() as vhost:
        sender, sentinel = DramatiqSender(vhost.url), sentinel_file()
        try:
            for _ in range(n):
                sender.send("noop")
            sender.send("sentinel", str(sentinel))
        finally:
            sender.close()
        return timed_drain(vhost.url, "peer", n, lambda: dramatiq_worker(vhost.url, processes, threads), sentinel)


def dramatiq_latency(samples: int) -> dict:
    with Vhost() as vhost:
        sender, worker = DramatiqSender(vhost.url), dramatiq_worker(vhost.url, 2, 1)
        try:
            return idle_latency(lambda sent_at, path: sender.send("latency", sent_at, path), samples)
        finally:
            worker.stop()
            sender.close()


# --- the platform ----------------------------------------------------------------------------------
def platform_publish(n: int, bulk: bool) -> float:
    with Vhost():
        bench_tasks.io_noop.apply_async()  # declare + connect outside the timing
        began = time.monotonic()
        if bulk:
            enqueue_many(bench_tasks.io_noop.s() for _ in range(n))
        else:
            for _ in range(n):
                bench_tasks.io_noop.apply_async()
        return rate(n, time.monotonic() - began)


def publish_rates(n: int, rounds: int = 10) -> dict[str, float]:
    """Single confirmed publishes: raw kombu, plain Celery and the platform, interleaved.

    ``n`` messages each, in ``rounds`` alternating blocks, each in its own vhost; each rate is its total
    count over its total time. Measured one after the other, the three saw different machines: confirm
    latency here drifts by 2x within a minute (quorum-queue fsyncs on a shared disk), which moved the
    ratio more than any change in code. Interleaving puts the drift on all three alike.
    """
    from bench import plain_app

    block = max(1, n // rounds)
    with Vhost() as raw_vhost, Connection(raw_vhost.url, transport_options={"confirm_publish": True}) as conn, \
            Vhost() as plain_vhost, Vhost():  # the last one is the platform's (Vhost points the app at it)
        raw_producer = conn.Producer()
        raw_queue()(conn.default_channel).declare()
        plain_app.app.conf.broker_url = plain_vhost.url
        plain_app.app._pool = None
        plain_app.app.amqp._producer_pool = None

        def raw():
            raw_producer.publish(BODY, exchange="raw", routing_key="raw", delivery_mode=2,
                                 content_type="application/json", content_encoding="utf-8")

        bench_tasks.io_noop.apply_async()  # connect, declare, and make the message template
        template = single._templates[bench_tasks.io_noop.name].publish_kwargs
        task_message = {"headers": template["headers"], "correlation_id": template["headers"]["id"],
                        "reply_to": app.thread_oid}

        def raw_task_message():  # the bytes a platform call sends, without the platform's code
            raw_producer.publish(BODY, exchange="raw", routing_key="raw", delivery_mode=2,
                                 content_type="application/json", content_encoding="utf-8", **task_message)

        senders = {"raw_publish_confirmed": raw, "raw_publish_confirmed_task_message": raw_task_message,
                   "plain_apply_async_confirmed": plain_app.noop.apply_async,
                   "platform_apply_async": bench_tasks.io_noop.apply_async}
        spent = dict.fromkeys(senders, 0.0)
        for send in senders.values():
            send()  # connect and declare outside the timing
        for _ in range(rounds):
            for name, send in senders.items():
                began = time.perf_counter()
                for _ in range(block):
                    send()
                spent[name] += time.perf_counter() - began
        return {name: rate(block * rounds, seconds) for name, seconds in spent.items()}


def platform_worker(url: str, role: str, concurrency: int, db_url: str):
    env = {"DJANGO_SETTINGS_MODULE": "project.settings.bench", "LOG_LEVEL": "WARNING",
           "CPU_CONCURRENCY": str(concurrency), "IO_CONCURRENCY": str(concurrency)}
    return Worker(role, url, db_url, env=env).start()


def platform_drain(n: int, role: str, concurrency: int, task, args=(), db_url: str | None = None) -> float:
    db_url = db_url or os.environ["DATABASE_URL"]
    queue = "dataset" if role == "cpu" else "ops_trace"
    sentinel_task = bench_tasks.cpu_sentinel if role == "cpu" else bench_tasks.io_sentinel
    with Vhost() as vhost:
        sentinel = sentinel_file()
        enqueue_many([*(task.s(*args) for _ in range(n)), sentinel_task.s(str(sentinel))])
        return timed_drain(vhost.url, queue, n, lambda: platform_worker(vhost.url, role, concurrency, db_url), sentinel)


def idle_latency(send, samples: int) -> dict:
    """Enqueue-to-start latency on an idle worker: ``send(sent_at, path)`` enqueues a task that appends
    its start minus ``sent_at`` to ``path``; one at a time, 20 ms apart, after a warm-up of 10."""
    warm = Path(tempfile.mkdtemp()) / "warm-up.log"
    for _ in range(10):  # every child has run a task (first-task imports are not latency)
        send(time.time(), str(warm))
        time.sleep(0.02)
    wait_for(lambda: warm.exists() and len(warm.read_text().split()) == 10, timeout=60, message="warm-up")
    time.sleep(2)  # let the broker settle after the previous measurement's vhost deletion
    path = Path(tempfile.mkdtemp()) / "latency.log"
    for _ in range(samples):
        send(time.time(), str(path))
        time.sleep(0.02)  # idle worker: one task at a time
    wait_for(lambda: path.exists() and len(path.read_text().split()) == samples, timeout=60,
             message="every latency sample")
    values = sorted(float(v) * 1000 for v in path.read_text().split())
    return {"p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2)}


def platform_latency(samples: int) -> dict:
    with Vhost() as vhost:
        worker = platform_worker(vhost.url, "cpu", 2, os.environ["DATABASE_URL"]).wait_ready()
        try:
            return idle_latency(lambda sent_at, path: bench_tasks.cpu_latency.apply_async((sent_at, path)), samples)
        finally:
            worker.stop()


def migrate(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "project.settings.bench"}
    if db_url.startswith("postgres"):
        name = db_url.rsplit("/", 1)[1]
        subprocess.run(["psql", db_url.rsplit("/", 1)[0] + "/postgres", "-qc", f"create database {name}"],
                       capture_output=True)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)


def run(size: str) -> dict:
    s = SIZES[size]
    migrate(os.environ["DATABASE_URL"])
    migrate(POSTGRES_URL)
    figures: dict = {}
    figures.update(publish_rates(s["publish"]))
    figures["raw_consume_ack_prefetch100"] = raw_consume(s["drain"])
    figures["platform_enqueue_many"] = platform_publish(s["publish"], bulk=True)
    figures["plain_drain_prefork_c2"] = plain_drain(s["drain"], "prefork", 2)
    figures["platform_drain_prefork_c2"] = platform_drain(s["drain"], "cpu", 2, bench_tasks.cpu_noop)
    figures["plain_drain_eventlet_c100"] = plain_drain(s["io_drain"], "eventlet", 100)
    figures["platform_drain_eventlet_c100"] = platform_drain(s["io_drain"], "io", 100, bench_tasks.io_noop)
    figures["plain_drain_eventlet_c500"] = plain_drain(s["io_drain"], "eventlet", 500)
    figures["platform_drain_eventlet_c500"] = platform_drain(s["io_drain"], "io", 500, bench_tasks.io_noop)
    figures["platform_drain_eventlet_c100_sleep100ms"] = platform_drain(s["sleep"], "io", 100, bench_tasks.io_sleep, (0.1,))
    figures["platform_drain_eventlet_c500_sleep100ms"] = platform_drain(s["sleep_c500"], "io", 500, bench_tasks.io_sleep, (0.1,))
    figures["platform_drain_prefork_c2_results_sqlite"] = platform_drain(s["drain"] // 2, "cpu", 2, bench_tasks.cpu_noop_result)
    figures["platform_drain_prefork_c2_results_postgres"] = platform_drain(
        s["drain"] // 2, "cpu", 2, bench_tasks.cpu_noop_result, db_url=POSTGRES_URL)
    figures["platform_latency_idle_prefork"] = platform_latency(s["latency"])
    figures["dramatiq_drain_p2_t1"] = dramatiq_drain(s["drain"], 2, 1)
    figures["dramatiq_drain_p2_t8"] = dramatiq_drain(s["io_drain"], 2, 8)
    figures["dramatiq_latency_idle_p2_t1"] = dramatiq_latency(s["latency"])
    return figures


def ratios(f: dict) -> dict:
    def r(a, b):
        return round(f[a] / f[b], 2)

    return {
        "bulk enqueue / plain apply_async (target >= 4)": r("platform_enqueue_many", "plain_apply_async_confirmed"),
        "apply_async / raw confirmed publish (target >= 0.9)": r("platform_apply_async", "raw_publish_confirmed"),
        # The same bytes as a platform call, published raw: what the message costs apart from any code.
        "raw publish of a task message / raw confirmed publish": r("raw_publish_confirmed_task_message",
                                                                   "raw_publish_confirmed"),
        "apply_async / raw publish of the same task message": r("platform_apply_async",
                                                                "raw_publish_confirmed_task_message"),
        "drain prefork -c2 / plain (target >= 0.8)": r("platform_drain_prefork_c2", "plain_drain_prefork_c2"),
        "drain eventlet -c100 / plain (target >= 0.8)": r("platform_drain_eventlet_c100", "plain_drain_eventlet_c100"),
        "drain eventlet -c500 / plain (target >= 0.8)": r("platform_drain_eventlet_c500", "plain_drain_eventlet_c500"),
        "eventlet -c500 100 ms I/O / own no-op drain (target >= 0.7)": r("platform_drain_eventlet_c500_sleep100ms",
                                                                         "platform_drain_eventlet_c500"),
        # -c100 with 100 ms tasks cannot pass 1,000/s whatever the pool does: reported against that ceiling.
        "eventlet -c100 100 ms I/O / its ceiling of 1,000/s": round(f["platform_drain_eventlet_c100_sleep100ms"] / 1000, 2),
        "results on (SQLite) / results off, prefork": r("platform_drain_prefork_c2_results_sqlite", "platform_drain_prefork_c2"),
        "results on (PostgreSQL) / results off, prefork": r("platform_drain_prefork_c2_results_postgres",
                                                            "platform_drain_prefork_c2"),
        # The peer (issue 17): reported, not a target. Dramatiq does less per message (no confirms, classic
        # queues, no events or ledger); these show what Celery's engine plus the platform cost against it.
        "drain prefork -c2 / Dramatiq 2 processes x 1 thread": r("platform_drain_prefork_c2", "dramatiq_drain_p2_t1"),
        "plain Celery prefork -c2 / Dramatiq 2 x 1": r("plain_drain_prefork_c2", "dramatiq_drain_p2_t1"),
        "drain eventlet -c100 / Dramatiq 2 processes x 8 threads": r("platform_drain_eventlet_c100", "dramatiq_drain_p2_t8"),
        "idle latency p50, platform / Dramatiq (lower is better)": round(
            f["platform_latency_idle_prefork"]["p50_ms"] / f["dramatiq_latency_idle_p2_t1"]["p50_ms"], 2),
    }


def machine() -> dict:
    import amqp
    import celery
    import kombu
    return {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(), "python": platform.python_version(),
            "celery": celery.__version__, "kombu": kombu.__version__, "amqp": amqp.__version__,
            "rabbitmq": rabbit.rabbitmqctl("version").strip(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_markdown(path: Path, result: dict, command: str) -> None:
    """Write the figures between the bench markers of ``path``, keeping the prose around them."""
    lines = [BEGIN, f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()), "",
             "| measurement | figure |", "|---|---|"]
    for key, value in result["figures"].items():
        unit = "" if isinstance(value, dict) else " /s"
        lines.append(f"| {key} | {value}{unit} |")
    lines += ["", "| ratio (same run) | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["ratios"].items()]
    lat = result["figures"]["platform_latency_idle_prefork"]
    peer = result["figures"]["dramatiq_latency_idle_p2_t1"]
    lines += ["", f"Enqueue-to-start latency on an idle prefork worker: p50 {lat['p50_ms']} ms (target <= 5), "
              f"p99 {lat['p99_ms']} ms (target <= 25); Dramatiq (2 x 1, same run): p50 {peer['p50_ms']} ms, "
              f"p99 {peer['p99_ms']} ms.", END]
    block = "\n".join(lines)
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json and benchmarks.md")
    args = parser.parse_args()
    result = {"size": args.size, "machine": machine()}
    result["figures"] = run(args.size)
    result["ratios"] = ratios(result["figures"])
    out_json = (args.out or ROOT / "bench") / "results.json"
    out_md = (args.out / "benchmarks.md") if args.out else ROOT / "docs" / "benchmarks.md"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2))
    write_markdown(out_md, result, "python bench/run.py" + (f" --size {args.size}" if args.size != "full" else ""))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
