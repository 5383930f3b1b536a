"""Scale-out benchmark: the no-op drain and the dataset profile on one RabbitMQ node, then on the 3-node
cluster of bin/cluster with 1, 2 and 3 worker hosts, in one run, every figure beside the same run's
single-node figure.

    .venv/bin/python bench/scaleout.py                  # ~16 min; writes bench/scaleout.json, prints a table
    .venv/bin/python bench/scaleout.py --size tiny --rounds 1   # a smoke run: 4 min here, starting the cluster included
    CLUSTER_PREFIX=pls CLUSTER_SUBNET=10.214.0 CLUSTER_DIR=$PWD/var/cluster-pls .venv/bin/python bench/scaleout.py
        # beside another cluster on the same machine (bin/cluster and tests/support/cluster.py read these)

Configurations (docs/benchmarks.md, "Scale-out"):
  * single:    the machine's RabbitMQ (127.0.0.1:5672, a fresh vhost: quorum queues of one member), one
               cpu worker in the root namespace (a namespace cannot reach the root's 127.0.0.1);
  * cluster-N: the cluster (quorum queues of PLATFORM_QUORUM_GROUP_SIZE members, leaders on node 1, as
               tests/cluster declares them), one cpu worker on each of N worker hosts (network namespaces
               on the cluster's bridge, tests.support.cluster.HostWorker), given the node list (or node 1
               only with --leader-only: the single node's path, plus the bridge and replication).
Every worker is compose/start/cpu with CPU_CONCURRENCY children (default 2: one per core of a host).
Rounds interleave the configurations (rotated each round) so the drift of this shared machine hits all
of them alike; medians are reported. Needs root. Needs SQLite (worker hosts share it through the
filesystem; PostgreSQL listens on 127.0.0.1 only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DIR = ROOT / "var" / "bench"
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.bench"
os.environ.setdefault("DATASETS_ROOT", str(BENCH_DIR / "datasets"))

SIZES = {"tiny": {"drain": 1000, "rows": 100_000}, "full": {"drain": 10_000, "rows": 2_000_000}}
HOSTS = {1: "w1", 2: "w2", 3: "w3"}  # worker host N is namespace $CLUSTER_PREFIX-wN at $CLUSTER_SUBNET.3N


def cpu_seconds(pids) -> float:
    """CPU time (user + system) of the processes ``pids`` and all their descendants, dead or alive."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in process.children(recursive=True):
                t = child.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Meter:
    """CPU seconds of the broker and of the workers, and how busy the machine was, over one measurement."""

    def __init__(self, broker_pids, worker_pids):
        import psutil

        self.pids = {"broker": broker_pids, "workers": worker_pids}
        self.start = {k: cpu_seconds(v) for k, v in self.pids.items()}
        self.by_node = {pid: cpu_seconds([pid]) for pid in broker_pids}
        self.machine = psutil.cpu_times()
        self.began = time.monotonic()

    def stop(self) -> dict:
        import psutil

        wall = time.monotonic() - self.began
        used = {f"{k}_cpu_s": round(cpu_seconds(v) - self.start[k], 2) for k, v in self.pids.items()}
        # per broker node: on the cluster, the node leading the queue does most of the work
        used["broker_cpu_s_by_node"] = [round(cpu_seconds([pid]) - self.by_node[pid], 2) for pid in self.pids["broker"]]
        now, before = psutil.cpu_times(), self.machine
        busy = sum(now) - now.idle - now.iowait - (sum(before) - before.idle - before.iowait)
        return {**used, "wall_s": round(wall, 2), "machine_busy": round(busy / (wall * os.cpu_count()), 2)}


class Single:
    """The machine's RabbitMQ node: one fresh vhost per measurement."""

    name, hosts = "single", 0

    def __init__(self):
        from tests.support import rabbit

        self.rabbit = rabbit
        self.pids = [int(rabbit.rabbitmqctl("eval", "list_to_integer(os:getpid()).").strip())]

    @contextmanager
    def vhost(self):
        vhost = self.rabbit.create_vhost("scaleout")
        try:
            yield self.rabbit.vhost_url(vhost)
        finally:
            self.rabbit.delete_vhost(vhost)

    def workers(self, url, db_url, env):
        from tests.support.workers import Worker

        return [Worker("cpu", url, db_url, env=env)]


class Cluster:
    """The cluster with ``hosts`` worker hosts; the topology declared from node 1 first, as tests/cluster
    does, so every queue's leader is on node 1 (the worst case for one node, and the same in every run)."""

    def __init__(self, hosts: int, leader_only: bool = False):
        from tests.support import cluster

        self.cluster, self.hosts, self.name = cluster, hosts, f"cluster-{hosts}"
        self.leader_only = leader_only  # every client on node 1 (the leaders' node): no inter-node hop
        self.pids = [int(cluster.ctl(n, "eval", "list_to_integer(os:getpid()).").strip()) for n in cluster.NODES]

    @contextmanager
    def vhost(self):
        from kombu import Connection

        from apps.core.broker import declare_dead_letter_queues
        from project import topology

        vhost = self.cluster.create_vhost()
        try:
            with Connection(self.cluster.node_url(1, vhost)) as connection:
                for queue in topology.work_queues():
                    queue(connection.channel()).declare()
                declare_dead_letter_queues(connection)
            yield self.cluster.node_url(1, vhost) if self.leader_only else self.cluster.broker_url(vhost)
        finally:
            self.cluster.delete_vhost(vhost)

    def workers(self, url, db_url, env):
        return [self.cluster.HostWorker(HOSTS[n], "cpu", url, db_url, env=env) for n in range(1, self.hosts + 1)]


@contextmanager
def running(target, url, db_url, concurrency):
    """``target``'s workers on ``url``, all answering (started together, then awaited); stopped after."""
    from tests.support.rabbit import point_app_at
    from project.celery import app

    point_app_at(app, url)
    env = {"DJANGO_SETTINGS_MODULE": "project.settings.bench", "LOG_LEVEL": "WARNING",
           "CPU_CONCURRENCY": str(concurrency)}
    workers = target.workers(url, db_url, env)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=180)
        yield [w.pid for w in workers]
    finally:
        for worker in workers:
            worker.stop()


def noop_drain(target, n: int, db_url: str, concurrency: int) -> dict:
    """``n`` no-op tasks and a sentinel published, then the workers started. Workers start one after the
    other on a busy machine, so the clock starts once the last one answers, and counts what was still
    waiting then; it stops when the sentinel (the last message) runs."""
    from apps.core.bulk import enqueue_many
    from bench import tasks as bench_tasks
    from bench.run import rate, ready_count, sentinel_file
    from tests.support.rabbit import point_app_at
    from tests.support.workers import wait_for
    from project.celery import app

    with target.vhost() as url:
        point_app_at(app, url)
        sentinel = sentinel_file()
        enqueue_many([*(bench_tasks.cpu_noop.s() for _ in range(n)), bench_tasks.cpu_sentinel.s(str(sentinel))])
        with running(target, url, db_url, concurrency) as pids:
            began, remaining = time.time(), ready_count(url, "dataset") - 1
            meter = Meter(target.pids, pids)
            wait_for(sentinel.exists, timeout=900, interval=0.02, message="the sentinel to run")
            time.sleep(0.05)
            seconds = float(sentinel.read_text()) - began
            cost = meter.stop()
    if remaining < n // 4:
        print(f"warning: {target.name}: only {remaining} of {n} tasks left when the last worker answered")
    return {"tasks_per_s": rate(remaining, seconds), "tasks": remaining, "seconds": round(seconds, 2), **cost}


def dataset_profile(target, path: Path, chunk_bytes: int, db_url: str, concurrency: int) -> dict:
    """One import of the CSV (bench/datasets_profile.py: enqueue -> profile stored) on idle, ready workers."""
    from apps.datasets import services
    from bench.datasets_profile import import_once, import_seconds

    with target.vhost() as url, running(target, url, db_url, concurrency) as pids:
        meter = Meter(target.pids, pids)
        dataset = import_once(path, f"scaleout-{target.name}", chunk_bytes)
        cost = meter.stop()
    services.remove_workdir(dataset)
    seconds = import_seconds(dataset)
    return {"rows_per_s": round(dataset.row_count / seconds), "rows": dataset.row_count,
            "chunks": dataset.chunks_total, "seconds": round(seconds, 2), **cost}


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """Medians per configuration and measurement, each with its ratio to the same run's single-node median.
    On this machine every worker host shares the same cores, so that ratio is the efficiency."""
    summary: dict = {}
    for config, measured in runs.items():
        summary[config] = {}
        for measurement, results in measured.items():
            key = "tasks_per_s" if measurement == "noop_drain" else "rows_per_s"
            units = "tasks" if measurement == "noop_drain" else "rows"
            summary[config][measurement] = {
                key: statistics.median(r[key] for r in results), "all": [r[key] for r in results],
                # CPU per 1,000 tasks / per million rows: what each role needs per unit of work
                **{f"{role}_cpu_s_per_{'1k' if units == 'tasks' else '1M'}_{units}": round(statistics.median(
                    r[f"{role}_cpu_s"] / r[units] * (1e3 if units == "tasks" else 1e6) for r in results), 3)
                   for role in ("broker", "workers")},
                "machine_busy": statistics.median(r["machine_busy"] for r in results)}
    for config in summary:
        for measurement, figures in summary[config].items():
            key = "tasks_per_s" if measurement == "noop_drain" else "rows_per_s"
            figures["ratio_to_single"] = round(figures[key] / summary["single"][measurement][key], 2)
    return summary


def markdown(summary: dict, concurrency: int) -> str:
    lines = ["| configuration | worker processes | no-op drain, tasks/s (median; runs) | ratio to single | "
             "dataset profile, rows/s (median; runs) | ratio to single |", "|---|---|---|---|---|---|"]
    for config, f in summary.items():
        hosts = 1 if config == "single" else int(config.split("-")[1])
        drain, profile = f["noop_drain"], f["dataset_profile"]
        lines.append(f"| {config} | {hosts} x {concurrency} children | {drain['tasks_per_s']:,.0f} "
                     f"({', '.join(f'{x:,.0f}' for x in drain['all'])}) | {drain['ratio_to_single']} | "
                     f"{profile['rows_per_s']:,.0f} ({', '.join(f'{x:,.0f}' for x in profile['all'])}) | "
                     f"{profile['ratio_to_single']} |")
    lines += ["", "| configuration | broker CPU s / 1k tasks | worker CPU s / 1k tasks | machine busy (drain) | "
              "broker CPU s / 1M rows | worker CPU s / 1M rows | machine busy (profile) |",
              "|---|---|---|---|---|---|---|"]
    for config, f in summary.items():
        d, p = f["noop_drain"], f["dataset_profile"]
        lines.append(f"| {config} | {d['broker_cpu_s_per_1k_tasks']} | {d['workers_cpu_s_per_1k_tasks']} | "
                     f"{d['machine_busy']} | {p['broker_cpu_s_per_1M_rows']} | {p['workers_cpu_s_per_1M_rows']} | "
                     f"{p['machine_busy']} |")
    return "\n".join(lines)


@contextmanager
def cluster_with_hosts(hosts: int, keep: bool):
    """The cluster up (started here unless it already runs; then taken down after unless ``keep``) and the
    worker host namespaces, removed after."""
    from tests.support import cluster

    missing = cluster.missing_requirements()
    if missing:
        raise SystemExit(f"bench/scaleout.py needs {', '.join(missing)}")
    started = not cluster.is_up()
    if started:
        print(f"starting the cluster ({cluster.PREFIX}, {cluster.SUBNET}.0/24) ...", flush=True)
        cluster.run("up", timeout=600)
    try:
        for n in range(1, hosts + 1):
            cluster.run("host-up", HOSTS[n], str(30 + n))
        yield
    finally:
        for n in range(1, hosts + 1):
            cluster.run("host-down", HOSTS[n], check=False)
        if started and not keep:
            cluster.run("down", timeout=300, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration once")
    parser.add_argument("--hosts", type=int, choices=[1, 2, 3], default=3, help="up to this many worker hosts")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker (per host)")
    parser.add_argument("--chunk-bytes", type=int, default=8 * 2**20)
    parser.add_argument("--leader-only", action="store_true",
                        help="give cluster clients node 1 only (where the topology, declared there, has its leaders)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave a cluster started here running")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scaleout.json")
    args = parser.parse_args()
    size = SIZES[args.size]

    from bench.common import scratch_database

    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("bench/scaleout.py runs on SQLite: worker hosts (namespaces) cannot reach 127.0.0.1")
    db_url, drop_db = scratch_database("scaleout")
    os.environ["DATABASE_URL"] = db_url
    from bench import run as bench_run  # django.setup() with project.settings.bench and this database
    from bench.datasets_profile import generate_csv

    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings.bench"  # datasets_profile sets its own on import
    command = "python bench/scaleout.py" + "".join(f" {a}" for a in sys.argv[1:])
    result = {"command": command, "size": args.size, "rounds": args.rounds, "concurrency": args.concurrency,
              "machine": bench_run.machine()}
    csv = generate_csv(BENCH_DIR / f"orders-{size['rows']}.csv", size["rows"])
    bench_run.migrate(db_url)
    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        with cluster_with_hosts(args.hosts, args.keep_cluster):
            from tests.support import cluster

            result["cluster"] = {"prefix": cluster.PREFIX, "subnet": f"{cluster.SUBNET}.0/24",
                                 "quorum_group_size": int(os.environ.get("PLATFORM_QUORUM_GROUP_SIZE", "3"))}
            result["cluster"]["clients_connect_to"] = "node 1" if args.leader_only else "the node list"
            targets = [Single(), *(Cluster(n, args.leader_only) for n in range(1, args.hosts + 1))]
            for r in range(args.rounds):
                for target in targets[r % len(targets):] + targets[:r % len(targets)]:
                    print(f"round {r + 1}/{args.rounds}: {target.name}", flush=True)
                    measured = runs.setdefault(target.name, {"noop_drain": [], "dataset_profile": []})
                    measured["noop_drain"].append(noop_drain(target, size["drain"], db_url, args.concurrency))
                    measured["dataset_profile"].append(
                        dataset_profile(target, csv, args.chunk_bytes, db_url, args.concurrency))
                    print("  ", json.dumps({k: v[-1] for k, v in measured.items()}), flush=True)
    finally:
        drop_db()
    result["load_average_after"] = os.getloadavg()
    result["runs"] = runs
    result["summary"] = summarize(runs)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nCommand: `{command}`  ({result['machine']['date']}; results in {args.out})\n")
    print(markdown(result["summary"], args.concurrency))


if __name__ == "__main__":
    main()
