"""The HTTP API under load, as a producer sees it: wrk against the web role started from compose/start/web.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/platform .venv/bin/python bench/http_load.py
    .venv/bin/python bench/http_load.py --size tiny          # seconds; what tests/core/test_bench_http.py runs

What it does, in one run against a throwaway RabbitMQ vhost and a throwaway database (PostgreSQL when
DATABASE_URL names one, else SQLite):
  1. the in-process cost of each request (Django's WSGI handler called directly, no server): CPU ms per
     request, the floor any server adds to;
  2. for each server (--servers): starts it, then wrk, --connections connections for --duration seconds:
     GET /api/v1/tasks/<id>/, GET /api/v1/mail/messages/<id>/ (workers idle), then
     POST /api/v1/mail/messages/ with a token and a unique idempotency key per request, once with the io
     worker (compose/start/io) not consuming mail meanwhile (workers idle; it delivers afterwards) and once
     while it delivers to a local SMTP server;
  3. after each POST run: waits until every accepted message (201) is SENT and counts SENT rows and the
     messages the SMTP server received (and their distinct Message-IDs): accepted == SENT == received ==
     distinct, or the run fails;
  4. --backpressure: the mail queue bounded by a RabbitMQ policy (max-length) and no consumer: POSTs get
     429 with the reason once it is full; then the consumer starts and POSTs are accepted again; every
     201 is delivered once (the 429'd rows stay QUEUED for mail.requeue_stale, docs/mail.md).

Servers: ``platform`` is compose/start/web as shipped (uvicorn, one process per core, plain HTTP on a
thread pool with persistent database connections); ``asgi-1`` is the previous web role (Django's ASGI
handler, one process, a new database connection per request); ``platform-*`` change one lever of the
platform's role; ``gunicorn`` serves project.wsgi with gthread workers, one per core, 16 threads (no
WebSocket: a reference for the HTTP path only).
wrk is Debian's package (bin/services installs it).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import scratch_database  # noqa: E402

SIZES = {"tiny": {"duration": 2, "inprocess": 20, "backpressure_bound": 20},
         "full": {"duration": 20, "inprocess": 500, "backpressure_bound": 2000}}
SERVERS = {
    "platform": {},
    "asgi-1": {"PLATFORM_WEB_HTTP": "asgi", "WEB_CONCURRENCY": "1", "DATABASE_CONN_MAX_AGE": "0"},
    # one lever of the platform's web role changed at a time
    "platform-1proc": {"WEB_CONCURRENCY": "1"},
    "platform-2threads": {"WEB_THREADS": "2"},
    "platform-4threads": {"WEB_THREADS": "4"},
    "platform-8threads": {"WEB_THREADS": "8"},
    "platform-32threads": {"WEB_THREADS": "32"},
    "platform-noreuse": {"DATABASE_CONN_MAX_AGE": "0"},
    "platform-a2wsgi": {"PLATFORM_WEB_HTTP": "a2wsgi"},  # the general WSGI-in-ASGI adapter (the role until 2026-12-05)
    "platform-asgi": {"PLATFORM_WEB_HTTP": "asgi"},  # Django's ASGI handler, one process per core, reuse on
}
# References started by hand, not from a start script: the command for (port, processes), connections kept.
HAND_STARTED = {
    "gunicorn": lambda port, procs: ["gunicorn", "project.wsgi:application", "-k", "gthread", "-w", procs,
                                     "--threads", "16", "-b", f"127.0.0.1:{port}", "--log-level", "warning"],
    # a Rust HTTP server calling the WSGI app on its own threads (no WebSocket)
    "granian": lambda port, procs: ["granian", "--interface", "wsgi", "project.wsgi:application", "--workers", procs,
                                    "--blocking-threads", "16", "--host", "127.0.0.1", "--port", port, "--no-ws",
                                    "--log-level", "warning"],
    # the platform's ASGI app (HTTP and WebSocket) under granian
    "granian-asgi": lambda port, procs: ["granian", "--interface", "asgi", "project.asgi:application", "--workers",
                                         procs, "--host", "127.0.0.1", "--port", port, "--log-level", "warning"],
}
PHASES = ("task GET", "mail GET", "mail POST", "mail POST delivering")

WRK_SCRIPT = r"""
-- Counts answers by status in every thread; POST bodies carry a unique idempotency key per request.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  method, path, token, prefix = args[1], args[2], args[3], args[4]
  n, s2xx_created, s2xx_ok, s429, sother = 0, 0, 0, 0, 0
  headers = {["Authorization"] = "Token " .. token, ["Content-Type"] = "application/json"}
end
function request()
  n = n + 1
  if method == "POST" then
    local body = string.format('{"to": ["load@example.com"], "subject": "load %d", "body": "hello", "idempotency_key": "%s-%d-%d"}', n, prefix, id, n)
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end
function response(status, hdrs, body)
  if status == 201 then s2xx_created = s2xx_created + 1
  elseif status == 200 then s2xx_ok = s2xx_ok + 1
  elseif status == 429 then
    s429 = s429 + 1
    if not sample429 then sample429 = (hdrs["Retry-After"] or hdrs["retry-after"] or "-") .. " " .. body end
  else sother = sother + 1 end
end
function done(summary, latency, requests)
  local c, o, t, x, sample = 0, 0, 0, 0, nil
  for _, thread in ipairs(threads) do
    c = c + thread:get("s2xx_created"); o = o + thread:get("s2xx_ok")
    t = t + thread:get("s429"); x = x + thread:get("sother")
    sample = sample or thread:get("sample429")
  end
  if sample then io.write("WRK-429 " .. sample .. "\n") end
  io.write(string.format('WRK-RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "max_ms": %f, ' ..
    '"errors": %d, "created": %d, "ok": %d, "too_many": %d, "other": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    c, o, t, x))
end
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default: by size)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--servers", default="platform,asgi-1", help=f"comma-separated, from {', '.join([*SERVERS, *HAND_STARTED])}")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, from {', '.join(PHASES)}")
    parser.add_argument("--backpressure", action="store_true", help="also run the 429 phase (platform server)")
    parser.add_argument("--json", help="write the figures here")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingSink:
    """An SMTP server that counts what it received and the distinct Message-IDs."""

    def __init__(self):
        self.received = 0
        self.message_ids: set[str] = set()

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes

        self.received += 1
        self.message_ids.add(message_from_bytes(envelope.content)["Message-ID"] or f"none-{self.received}")
        return "250 2.0.0 Ok: queued"


def wrk(url: str, method: str, token: str, prefix: str, duration: float, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    path = url.split("/", 3)[3]
    try:
        run = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--timeout", "10s",
                              "-s", script.name, url.rsplit("/" + path, 1)[0], "--", method, "/" + path, token, prefix],
                             capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script.name)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK-RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    sample = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK-429 ")), None)
    if sample:  # one 429 answer: its Retry-After header and body
        _, retry_after, body = sample.split(" ", 2)
        result["sample_429"] = {"retry_after": retry_after, "body": json.loads(body) if body else None}
    result["rps"] = result["requests"] / result["seconds"]
    return result


class Server:
    """One web server process, started from compose/start/web (or gunicorn for the reference)."""

    def __init__(self, name: str, broker_url: str, db_url: str):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
               "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": broker_url,
               "DATABASE_URL": db_url, "WEB_PORT": str(self.port), "LOG_LEVEL": "WARNING"}
        if name in HAND_STARTED:
            env["DATABASE_CONN_MAX_AGE"] = "300"
            command = HAND_STARTED[name](str(self.port), str(os.cpu_count() or 1))
        else:
            env.update(SERVERS[name])
            command = [str(ROOT / "compose" / "start" / "web")]
        self.log = tempfile.NamedTemporaryFile("w+b", prefix=f"bench-web-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_up()

    def _wait_up(self):
        import urllib.request

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"web server {self.name} exited:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{self.url}/api/v1/live/", timeout=1).status == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise SystemExit(f"web server {self.name} did not answer in 90 s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its children (uvicorn/gunicorn workers), from /proc."""
        pids = [self.proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                                                                capture_output=True, text=True).stdout.split()]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        os.unlink(self.log.name)


def in_process_costs(token: str, task_id: str, message_id: int, n: int) -> dict:
    """CPU ms per request through Django's WSGI handler in this process (no server, no network)."""
    import io

    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()

    def call(method, path, body=b""):
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
                   "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                   "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "CONTENT_LENGTH": str(len(body)),
                   "CONTENT_TYPE": "application/json", "HTTP_AUTHORIZATION": f"Token {token}", "HTTP_HOST": "127.0.0.1"}
        statuses = []
        out = handler(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(out)
        out.close()
        assert statuses[0][:3] in ("200", "201"), statuses

    prefix, serial = uuid.uuid4().hex[:8], itertools.count()
    cases = {
        "task GET": lambda i: call("GET", f"/api/v1/tasks/{task_id}/"),
        "mail GET": lambda i: call("GET", f"/api/v1/mail/messages/{message_id}/"),
        "mail POST": lambda i: call("POST", "/api/v1/mail/messages/", json.dumps(
            {"to": ["inproc@example.com"], "subject": "x", "body": "hello", "idempotency_key": f"in-{prefix}-{i}-{next(serial)}"}
        ).encode()),
    }

    def measure() -> dict:
        costs = {}
        for name, fn in cases.items():
            for i in range(5):
                fn(f"w{len(costs)}-{i}")
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(n):
                fn(f"{len(costs)}-{i}")
            costs[name] = {"cpu_ms": (time.process_time() - cpu) / n * 1000,
                           "wall_ms": (time.perf_counter() - wall) / n * 1000}
        return costs

    # The request path's levers, each turned off in turn (same process, interleaved rounds).
    from django.conf import settings
    from django.db import connection
    from rest_framework import serializers

    from apps.core.serializers import OutputModelSerializer

    ours = {name: getattr(OutputModelSerializer, name) for name in ("get_fields", "to_representation")}

    def drf_serializers(on: bool) -> None:
        for name, method in ours.items():
            setattr(OutputModelSerializer, name, method if on else getattr(serializers.ModelSerializer, name))

    levers = {
        "as shipped": lambda on: None,
        "DRF's ModelSerializer": drf_serializers,
        "token looked up per request": lambda on: setattr(settings, "API_TOKEN_CACHE_SECONDS", 5 if on else 0),
        "new connection per request": lambda on: (connection.settings_dict.__setitem__("CONN_MAX_AGE", 300 if on else 0),
                                                  connection.close()),  # the age is read when connecting
    }
    rounds = {lever: [] for lever in levers}
    for round_ in range(2):
        for lever, switch in levers.items():
            switch(False)
            try:
                rounds[lever].append(measure())
            finally:
                switch(True)
    return {lever: {name: {k: sum(r[name][k] for r in results) / len(results) for k in ("cpu_ms", "wall_ms")}
                    for name in cases} for lever, results in rounds.items()}


def wait_delivered(prefix: str, accepted: int, sink: CountingSink, before: int, all_sent: bool = True,
                   timeout: float = 300) -> dict:
    """Counts for the rows of one run once delivery settled. ``accepted`` is the 201s wrk saw: requests in
    flight when wrk stopped were served (stored, published) without wrk counting their answer, so up to
    one per connection more rows than 201s is expected. With ``all_sent`` every stored row must end SENT;
    without it (the 429 phase) rows refused by a full queue stay QUEUED for mail.requeue_stale."""
    from django.db.models import Count

    from apps.mail.models import Message, Status

    rows = Message.objects.filter(idempotency_key__startswith=prefix).order_by()

    def counts() -> dict:
        by_status = dict(rows.values_list("status").annotate(n=Count("id")))
        return {"accepted": accepted, "stored": sum(by_status.values()), "sent": by_status.get(Status.SENT, 0),
                "queued": by_status.get(Status.QUEUED, 0), "received": sink.received - before,
                "other": {k: v for k, v in by_status.items() if k not in (Status.SENT, Status.QUEUED)}}

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = counts()
        if c["sent"] >= accepted and c["received"] == c["sent"] and not c["other"] \
                and (not all_sent or c["sent"] == c["stored"]):
            break
        time.sleep(0.5)
    time.sleep(1)  # anything sent twice would arrive now
    return counts()


def exactly_once(d: dict, connections: int, all_sent: bool = True) -> bool:
    """Every 201 delivered, each delivered row received once by the SMTP server, nothing else lost."""
    return (d["accepted"] <= d["sent"] <= d["accepted"] + connections and d["sent"] == d["received"]
            and not d["other"] and (d["stored"] == d["sent"] if all_sent else d["stored"] == d["sent"] + d["queued"]))


def main():
    args = parse_args()
    size = SIZES[args.size]
    duration = args.duration or size["duration"]
    if not shutil.which("wrk"):
        raise SystemExit("bench/http_load.py: wrk is not installed (bin/services installs Debian's wrk)")
    db_url, drop_database = scratch_database("http")
    os.environ["DATABASE_URL"] = db_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.test"
    os.environ["DATABASE_CONN_MAX_AGE"] = "300"  # the in-process cost as the web role pays it

    import django

    django.setup()
    import logging

    from aiosmtpd.controller import Controller
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from apps.control.models import TaskRecord
    from apps.mail import services
    from project.celery import app
    from project.topology import work_queues
    from tests.support import rabbit
    from tests.support.workers import Worker

    call_command("migrate", verbosity=0)
    vhost = rabbit.create_vhost("bench-http")
    broker_url = rabbit.vhost_url(vhost)
    app.conf.broker_url = broker_url
    app._pool = None
    app.amqp._producer_pool = None
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd: a line per connection otherwise
    sink = CountingSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    worker = None
    figures = {"database": connection.vendor, "connections": args.connections, "duration_s": duration,
               "cpus": os.cpu_count(), "servers": {}}
    try:
        with app.connection_for_write() as conn:
            for queue in work_queues():
                queue.bind(conn.default_channel).declare()
        user = get_user_model().objects.create_user("bench", password="x", is_staff=True)
        token = Token.objects.create(user=user).key
        task = TaskRecord.objects.create(task_id=f"bench-{uuid.uuid4()}", name="bench.task", owner=user)
        message, _ = services.enqueue(to=["seed@example.com"], subject="seed", body="seed", idempotency_key="seed")
        worker = Worker("io", broker_url, db_url, env={
            "EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(smtp.port), "MAIL_DOMAIN_RATE": "0", "LOG_LEVEL": "WARNING"})
        worker.start().wait_ready(timeout=120)
        wait_delivered("seed", 1, sink, 0, timeout=60)

        received = sink.received
        figures["in_process"] = in_process_costs(token, task.task_id, message.pk, size["inprocess"])
        in_process_posts = 2 * 4 * (size["inprocess"] + 5)  # 2 rounds x 4 lever settings
        wait_delivered("in-", in_process_posts, sink, received, timeout=300)
        connection.close()

        for name in args.servers.split(","):
            server = Server(name, broker_url, db_url)
            runs = {}
            try:
                for label, method, path in (("task GET", "GET", f"/api/v1/tasks/{task.task_id}/"),
                                            ("mail GET", "GET", f"/api/v1/mail/messages/{message.pk}/"),
                                            ("mail POST", "POST", "/api/v1/mail/messages/"),
                                            ("mail POST delivering", "POST", "/api/v1/mail/messages/")):
                    if label not in args.phases.split(","):
                        continue
                    prefix = f"load-{name}-{uuid.uuid4().hex[:6]}"
                    idle = label == "mail POST"  # workers idle: the io worker does not consume mail meanwhile
                    if idle:
                        app.control.cancel_consumer("mail", destination=[worker.nodename], reply=True)
                    before_cpu, before_received = server.cpu_seconds(), sink.received
                    try:
                        result = wrk(server.url + path, method, token, prefix, duration, args.connections)
                        result["server_cpu_ms_per_request"] = (server.cpu_seconds() - before_cpu) / max(1, result["requests"]) * 1000
                        result["loadavg"] = open("/proc/loadavg").read().split()[0]
                    finally:
                        if idle:
                            app.control.add_consumer("mail", destination=[worker.nodename], reply=True)
                    if method == "POST":
                        result["delivery"] = wait_delivered(prefix, result["created"], sink, before_received)
                    runs[label] = result
            finally:
                server.stop()
            figures["servers"][name] = runs

        if args.backpressure:
            figures["backpressure"] = backpressure(app, worker, broker_url, db_url, vhost, token, sink,
                                                   size["backpressure_bound"], duration, args.connections)
    finally:
        if worker is not None:
            worker.stop()
        smtp.stop()
        rabbit.delete_vhost(vhost)
        connection.close()
        drop_database()

    figures["smtp"] = {"received": sink.received, "distinct_message_ids": len(sink.message_ids)}
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    failures = [f"{server} {label}: {r['delivery']}" for server, runs in figures["servers"].items()
                for label, r in runs.items() if "delivery" in r and not exactly_once(r["delivery"], args.connections)]
    bp = figures.get("backpressure")
    if bp and not exactly_once(bp["delivery"], 2 * args.connections, all_sent=False):
        failures.append(f"backpressure: {bp['delivery']}")
    if sink.received != len(sink.message_ids):
        failures.append(f"the SMTP server received {sink.received} messages with {len(sink.message_ids)} Message-IDs")
    if failures:
        raise SystemExit("accepted != delivered exactly once: " + "; ".join(failures))


def backpressure(app, worker, broker_url, db_url, vhost, token, sink, bound, duration, connections) -> dict:
    """Bound the mail queue with a policy, stop consuming it, load it past the bound, then drain it."""
    from apps.core.broker import queue_depths
    from tests.support import rabbit

    server = Server("platform", broker_url, db_url)
    prefix = f"bp-{uuid.uuid4().hex[:6]}"
    before = sink.received
    try:
        app.control.cancel_consumer("mail", destination=[worker.nodename], reply=True)
        rabbit.rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "bench-bound", "^mail$",
                           json.dumps({"max-length": bound}))
        time.sleep(1)
        full = wrk(server.url + "/api/v1/mail/messages/", "POST", token, prefix + "-a", duration, connections)
        app.control.add_consumer("mail", destination=[worker.nodename], reply=True)
        deadline = time.monotonic() + 300  # the queue drains (its bound stays)
        while queue_depths(["mail"], broker_url)[0].messages > bound // 10 and time.monotonic() < deadline:
            time.sleep(0.5)
        drained_after = time.monotonic() - deadline + 300
        drained = wrk(server.url + "/api/v1/mail/messages/", "POST", token, prefix + "-b", duration, connections)
    finally:
        rabbit.rabbitmqctl("clear_policy", "-p", vhost, "bench-bound")
        server.stop()
    accepted = full["created"] + drained["created"]
    return {"bound": bound, "full": full, "drained": drained, "drain_seconds": drained_after,
            "delivery": wait_delivered(prefix, accepted, sink, before, all_sent=False)}


def report(figures: dict) -> None:
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"database={figures['database']} connections={figures['connections']} duration={figures['duration_s']}s "
          f"cpus={figures['cpus']} loadavg(end)={load}")
    for lever, costs in figures["in_process"].items():
        print(f"in process, {lever:<28}: " + "; ".join(
            f"{name} {cost['cpu_ms']:.2f} ms CPU ({cost['wall_ms']:.2f} wall)" for name, cost in costs.items()))
    for server, runs in figures["servers"].items():
        for label, r in runs.items():
            delivery = r.get("delivery")
            print(f"{server:<9} {label:<20}: {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                  f"server CPU {r['server_cpu_ms_per_request']:.2f} ms/req  errors {r['errors']}  non-2xx {r['too_many'] + r['other']}"
                  f"  load {r['loadavg']}"
                  + (f"\n{'':<32}201 seen {delivery['accepted']}, stored {delivery['stored']}, SENT {delivery['sent']}, "
                     f"received by SMTP {delivery['received']}"
                     if delivery else ""))
    print(f"SMTP server: {figures['smtp']['received']} messages, {figures['smtp']['distinct_message_ids']} distinct Message-IDs")
    bp = figures.get("backpressure")
    if bp:
        print(f"backpressure: the queue drained below a tenth of its bound {bp['drain_seconds']:.1f} s after the consumer came back")
        for phase in ("full", "drained"):
            r = bp[phase]
            print(f"backpressure ({phase}, bound {bp['bound']}): {r['rps']:.1f} req/s, 201 {r['created']}, 429 {r['too_many']}, "
                  f"other {r['other']}, p99 {r['p99_ms']:.1f} ms")
        d = bp["delivery"]
        print(f"backpressure delivery: 201 seen {d['accepted']}, stored {d['stored']}, SENT {d['sent']}, received "
              f"{d['received']}, QUEUED {d['queued']} (refused by the full queue: left for mail.requeue_stale)")


if __name__ == "__main__":
    main()
