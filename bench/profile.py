"""Profiles behind docs/benchmarks.md: where the time goes on the publish and drain paths.

    .venv/bin/python bench/profile.py publish [--bulk] [--count 2000]     # pyinstrument call tree of apply_async / enqueue_many
    .venv/bin/python bench/profile.py drain --role io --concurrency 100   # py-spy on a draining worker (and its children)
    .venv/bin/python bench/profile.py drain --role cpu --concurrency 2 --task cpu_noop_result

``publish`` prints the rate and the call tree (functions over 1% of the time). ``drain`` fills a queue,
starts a real worker (compose/start/<role>), samples it with py-spy for 8 s while it drains, and prints
the share of samples in which each function is on the stack (inclusive), per process.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
sys.argv, _argv = sys.argv[:1], sys.argv[1:]  # bench.run parses nothing at import, but keep argv clean
import bench.run as br  # noqa: E402  (sets up Django with project.settings.bench)
from bench import tasks as bench_tasks  # noqa: E402


def profile_publish(count: int, bulk: bool) -> None:
    from pyinstrument import Profiler

    with br.Vhost():
        bench_tasks.io_noop.apply_async()  # connect and declare outside the profile
        profiler = Profiler(interval=0.001)
        profiler.start()
        began = time.monotonic()
        if bulk:
            br.enqueue_many(bench_tasks.io_noop.s() for _ in range(count))
        else:
            for _ in range(count):
                bench_tasks.io_noop.apply_async()
        elapsed = time.monotonic() - began
        profiler.stop()
    print(f"{'enqueue_many' if bulk else 'apply_async'}: {count / elapsed:.0f}/s under the profiler")
    print(profiler.output_text(unicode=False, color=False, show_all=True))


def inclusive_shares(raw_file: str, top: int) -> list[str]:
    counts, total = collections.Counter(), 0
    for line in open(raw_file):
        stack, _, samples = line.rstrip().rpartition(" ")
        total += int(samples)
        seen = set()
        for frame in stack.split(";"):
            name = frame.split(" (")[0]
            where = frame.split(" (")[1].split(":")[0].replace(str(ROOT / ".venv/lib/python3.11/site-packages") + "/", "") \
                if " (" in frame else ""
            key = f"{name} ({where})"
            if key not in seen:
                seen.add(key)
                counts[key] += int(samples)
    return [f"{100 * c / total:5.1f}% {k}" for k, c in counts.most_common(top)] if total else []


def profile_drain(role: str, concurrency: int, count: int, task_name: str | None, top: int) -> None:
    task = getattr(bench_tasks, task_name) if task_name else (bench_tasks.io_noop if role == "io" else bench_tasks.cpu_noop)
    queue = "ops_trace" if role == "io" else "dataset"
    with br.Vhost() as vhost:
        br.enqueue_many(task.s() for _ in range(count))
        worker = br.platform_worker(vhost.url, role, concurrency, os.environ["DATABASE_URL"])
        try:
            br.wait_for(lambda: br.ready_count(vhost.url, queue) < count - 200, timeout=60, interval=0.01,
                        message="the worker to start draining")
            began, ready_before = time.time(), br.ready_count(vhost.url, queue)
            pids = [worker.pid] + (worker.children() if role == "cpu" else [])
            spies = [(pid, f"/tmp/py-spy-{pid}.txt") for pid in pids]
            running = [subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "-r", "200", "-f", "raw", "-o", out,
                                         "-d", "8", "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for pid, out in spies]
            for spy in running:
                spy.wait()
            rate = (ready_before - br.ready_count(vhost.url, queue)) / (time.time() - began)
        finally:
            worker.stop()
    print(f"drain rate while sampled: {rate:.0f}/s (py-spy itself takes CPU on a 2-core machine)")
    for pid, out in spies:
        print(f"== pid {pid}" + (" (main process)" if pid == pids[0] else " (pool child)"))
        print("\n".join(inclusive_shares(out, top)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    publish = sub.add_parser("publish")
    publish.add_argument("--bulk", action="store_true")
    publish.add_argument("--count", type=int, default=2000)
    drain = sub.add_parser("drain")
    drain.add_argument("--role", choices=("cpu", "io"), default="io")
    drain.add_argument("--concurrency", type=int, default=100)
    drain.add_argument("--count", type=int, default=15000)
    drain.add_argument("--task", default=None, help="a task of bench/tasks.py (default: the role's no-op)")
    drain.add_argument("--top", type=int, default=60)
    args = parser.parse_args(_argv)
    if args.what == "publish":
        profile_publish(args.count, args.bulk)
    else:
        profile_drain(args.role, args.concurrency, args.count, args.task, args.top)


if __name__ == "__main__":
    main()
