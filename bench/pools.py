"""The io role's pools side by side, in one run: eventlet (the default) and threads (IO_POOL=threads).

    .venv/bin/python bench/pools.py                       # short: 2,000 no-ops, 1,000 x 100 ms, 500 mails
    .venv/bin/python bench/pools.py --drain 20000 --sleep 5000 --mail 2000 -c 200

For each pool, a worker from compose/start/io with IO_POOL set (the harness of bench/run.py: a fresh vhost,
the queue filled first, the drain timed from the first message taken to a sentinel task):
  * no-op drain: bench.io.noop on ops_trace (SQLite, no result stored);
  * 100 ms I/O: bench.io.sleep(0.1), the ceiling being concurrency / 0.1 s;
  * mail delivery: bench/mail_throughput.py (bulk lane, an SMTP server that waits 100 ms per message,
    PostgreSQL with the io role's bounded pool) run with the same IO_POOL.
Figures are only comparable within one run: the output gives threads / eventlet ratios and the load.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import tasks as bench_tasks  # noqa: E402
from bench.run import migrate, platform_drain  # noqa: E402  (sets up Django with project.settings.bench)

POOLS = ("eventlet", "threads")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/platform")


def mail_rate(pool: str, concurrency: int, messages: int) -> float:
    """Bulk-lane delivery rate (messages/s) from bench/mail_throughput.py with IO_POOL=pool."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "mail_throughput.py"), "-c", str(concurrency), "-n", str(messages),
         "--skip-transactional"],
        env={**os.environ, "IO_POOL": pool, "DATABASE_URL": POSTGRES_URL}, cwd=ROOT, capture_output=True, text=True,
        timeout=1800)
    found = re.search(r"bulk\s+delivery: ([\d.]+) msg/s", out.stdout)
    if out.returncode or not found:
        raise SystemExit(f"bench/mail_throughput.py failed on {pool}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=100)
    parser.add_argument("--drain", type=int, default=2000, help="no-op tasks per pool")
    parser.add_argument("--sleep", type=int, default=1000, help="100 ms tasks per pool")
    parser.add_argument("--mail", type=int, default=500, help="mails per pool (0: leave mail out)")
    args = parser.parse_args()
    migrate(os.environ["DATABASE_URL"])
    c = args.concurrency
    figures: dict[str, dict[str, float]] = {}
    for pool in POOLS:
        os.environ["IO_POOL"] = pool  # the workers the harness starts inherit it
        figures[pool] = {
            "no-op drain (tasks/s)": platform_drain(args.drain, "io", c, bench_tasks.io_noop),
            f"100 ms I/O (tasks/s, ceiling {c * 10:,})": platform_drain(args.sleep, "io", c, bench_tasks.io_sleep, (0.1,)),
        }
        if args.mail:
            figures[pool]["mail delivery, bulk (msg/s)"] = round(mail_rate(pool, c, args.mail), 1)
    os.environ.pop("IO_POOL")
    load = open("/proc/loadavg").read().split()[:3]
    print(f"io pools, -c {c}, load average at the end {' '.join(load)} ({os.cpu_count()} cores)")
    print(f"{'':42} {'eventlet':>10} {'threads':>10} {'threads/eventlet':>17}")
    for name in figures["eventlet"]:
        e, t = figures["eventlet"][name], figures["threads"][name]
        print(f"{name:42} {e:>10.1f} {t:>10.1f} {t / e:>17.2f}")


if __name__ == "__main__":
    main()
