"""No-op and fixed-I/O tasks for the benchmarks (registered only with project.settings.bench)."""
import time

from celery import shared_task


@shared_task(name="bench.cpu.noop", ignore_result=True)
def cpu_noop():
    return None


@shared_task(name="bench.io.noop", ignore_result=True)
def io_noop():
    return None


@shared_task(name="bench.cpu.noop_result")
def cpu_noop_result():
    return None


@shared_task(name="bench.io.noop_result")
def io_noop_result():
    return None


@shared_task(name="bench.io.sleep", ignore_result=True)
def io_sleep(seconds: float):
    time.sleep(seconds)  # green under -P eventlet: stands for 100 ms of network I/O


@shared_task(name="bench.cpu.latency", ignore_result=True)
def cpu_latency(sent_at: float, path: str):
    started = time.time()
    with open(path, "a") as f:
        f.write(f"{started - sent_at:.6f}\n")


@shared_task(name="bench.cpu.sentinel", ignore_result=True)
def cpu_sentinel(path: str):
    """Published after a backlog: when it runs, the backlog has (all but a prefetch window) run."""
    with open(path, "w") as f:
        f.write(repr(time.time()))


@shared_task(name="bench.io.sentinel", ignore_result=True)
def io_sentinel(path: str):
    with open(path, "w") as f:
        f.write(repr(time.time()))
