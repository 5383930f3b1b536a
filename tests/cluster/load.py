"""Load for the cluster cases, and its accounting.

A publisher thread in the test process (outside the worker hosts) publishes one task at a time with
confirms, alternating the ``dataset`` lane (tests.cpu.effect, prefork host) and the ``mail`` lane
(tests.io.effect routed to mail, eventlet host), while the workers process them. Each task applies a keyed
effect once (tests/support/tasks.py: a file created with O_EXCL; a re-run that finds it logs a guarded
re-run), so after a fault we can count: published, confirmed, executed, guarded re-runs, duplicated
effects, dead-lettered, lost, and how long processing stalled.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from project import topology
from tests.support import rabbit
from tests.support.tasks import cpu_effect, io_effect
from tests.support.workers import wait_for

LANES = (topology.DATASET, topology.MAIL)
WORK_SECONDS = 0.05  # per task: the work during which a fault can strike


@dataclass
class Publish:
    key: str
    queue: str
    started: float
    answered: float = 0.0
    error: str = ""  # empty: confirmed
    exc: Exception | None = None  # what the caller got, as raised

    @property
    def confirmed(self) -> bool:
        return self.answered > 0 and not self.error


@dataclass
class Outcome:
    case: str
    published: int
    confirmed: int
    raised: int
    executed: int
    guarded_reruns: int
    duplicated: int
    dead_lettered: int
    lost: int
    stall: float  # longest gap between two effects of one lane from the fault on (seconds)
    longest_publish: float  # slowest answer (confirm or error) a caller waited for
    errors: list[str] = field(default_factory=list)

    HEADER = ("| case | published | confirmed | raised to caller | executed | guarded re-runs | duplicated effects | "
              "dead-lettered | lost | processing stalled (s) | slowest publish answer (s) |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|\n")

    def row(self) -> str:
        return (f"| {self.case} | {self.published} | {self.confirmed} | {self.raised} | {self.executed} | "
                f"{self.guarded_reruns} | {self.duplicated} | {self.dead_lettered} | {self.lost} | {self.stall:.1f} | "
                f"{self.longest_publish:.1f} |")


def write_report_row(outcome: Outcome) -> None:
    """Append a case's row to var/cluster-report.md (CLUSTER_REPORT), header first."""
    report = Path(os.environ.get("CLUSTER_REPORT", "var/cluster-report.md"))
    report.parent.mkdir(parents=True, exist_ok=True)
    if not report.exists():
        report.write_text(Outcome.HEADER)
    with report.open("a") as f:
        f.write(outcome.row() + "\n")


class Load:
    def __init__(self, directory: Path, pause: float = 0.02):
        self.directory = directory
        self.pause = pause
        for lane in LANES:
            (directory / lane).mkdir(parents=True, exist_ok=True)
        self.publishes: list[Publish] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cluster-load")

    def lane_dir(self, lane: str) -> str:
        return str(self.directory / lane)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "a publish hung (no confirm and no error)"

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            lane = LANES[i % 2]
            publish = Publish(f"{lane[0]}{i}", lane, time.time())
            self.publishes.append(publish)
            try:
                if lane == topology.DATASET:
                    cpu_effect.apply_async((self.lane_dir(lane), publish.key, WORK_SECONDS))
                else:
                    io_effect.apply_async((self.lane_dir(lane), publish.key, WORK_SECONDS), **topology.route(topology.MAIL))
            except Exception as exc:  # noqa: BLE001 - an error is an answer; silence (a hang) is the failure
                publish.error, publish.exc = f"{type(exc).__name__}: {exc}", exc
            publish.answered = time.time()
            i += 1
            time.sleep(self.pause)

    def confirmed_keys(self, lane: str) -> list[str]:
        return [p.key for p in self.publishes if p.queue == lane and p.confirmed]

    def effects(self, lane: str) -> dict[str, float]:
        """Key -> time its effect was applied, for one lane."""
        out = {}
        with os.scandir(self.lane_dir(lane)) as entries:
            for entry in entries:
                if entry.name.startswith("effect-"):
                    out[entry.name.removeprefix("effect-")] = entry.stat().st_mtime
        return out

    def wait_processed(self, workers=(), timeout: float = 180) -> None:
        """Until every confirmed publish has its effect (or was dead-lettered; counted after). A worker of
        ``workers`` that exited fails this at once, with its exit code and log tail, instead of a timeout."""
        def done():
            for worker in workers:
                worker.assert_alive()
            return all(set(self.confirmed_keys(lane)) <= set(self.effects(lane)) for lane in LANES)

        try:
            wait_for(done, timeout=timeout, interval=0.5, message="every confirmed task to run")
        except AssertionError as timeout_error:
            raise AssertionError(f"{timeout_error}; {self.missing()}\n{where_workers_wait(workers)}") from None

    def missing(self) -> str:
        """Per lane: confirmed publishes without an effect, and the first few of their keys."""
        parts = []
        for lane in LANES:
            keys = sorted(set(self.confirmed_keys(lane)) - set(self.effects(lane)), key=lambda k: int(k[1:]))
            parts.append(f"{lane}: {len(keys)} confirmed without an effect {keys[:5]}")
        return "; ".join(parts)

    def account(self, case: str, broker_url: str, fault_at: float) -> Outcome:
        executed = guarded = dead = lost = 0
        stall = 0.0
        stalls = []  # per lane, where its longest gap was (relative to the fault): which side stalled
        # Gaps run until the last publish answered: a lane whose publishes were all refused after the fault has
        # no effect after it, and that is a stall too (a CI run: 552 refused in the kill -9 case, "stall 0.7").
        answered = [p for p in self.publishes if p.answered]
        last_answer = max((p.answered for p in answered), default=fault_at)
        for lane in LANES:
            confirmed = set(self.confirmed_keys(lane))
            effects = self.effects(lane)
            dead_keys = set()
            for message in rabbit.get_messages(broker_url, f"{lane}.dead", limit=10_000):
                args = json.loads(message.body)[0]
                if args and args[0] == self.lane_dir(lane):
                    dead_keys.add(args[1])
            executed += len(confirmed & set(effects))
            dead += len(dead_keys - set(effects))
            lost += len(confirmed - set(effects) - dead_keys)
            reruns = Path(self.lane_dir(lane), "duplicates.log")
            guarded += len(reruns.read_text().splitlines()) if reruns.exists() else 0
            times = sorted([*(t for t in effects.values() if t >= fault_at - 1), last_answer])
            gaps = [(b - a, a, b) for a, b in zip(times, times[1:])]
            if gaps:
                gap, began, ended = max(gaps)
                stalls.append(f"{lane}: longest gap {gap:.1f}s from {began - fault_at:+.1f}s to {ended - fault_at:+.1f}s")
                stall = max(stall, gap)
        outcome = Outcome(
            case=case, published=len(self.publishes), confirmed=sum(p.confirmed for p in self.publishes),
            raised=sum(bool(p.error) for p in self.publishes), executed=executed, guarded_reruns=guarded,
            duplicated=0,  # an effect file is created once (O_EXCL): a second application shows as a guarded re-run
            dead_lettered=dead, lost=lost, stall=stall,
            longest_publish=max((p.answered - p.started for p in answered), default=0.0),
            errors=sorted({p.error.split(":")[0] for p in self.publishes if p.error}),
        )
        write_report_row(outcome)
        print(outcome.row(), "errors:", outcome.errors)
        print("  " + "; ".join(stalls))
        for p in self.publishes:  # the slow answers, relative to the fault: where a caller waited
            if p.answered - p.started > 1:
                print(f"  slow publish {p.key}: started {p.started - fault_at:+.1f}s, answered after "
                      f"{p.answered - p.started:.1f}s {p.error[:200]}")
        return outcome


def where_workers_wait(workers) -> str:
    """What each worker is doing: SIGUSR1 (Celery's thread stacks; on eventlet also every green thread's,
    apps/core/green_stacks.py) into its log, py-spy of its processes, and its log's tail."""
    import signal

    out = []
    for worker in workers:
        if worker.alive():
            worker.kill(signal.SIGUSR1)
    time.sleep(2)
    for worker in workers:
        out.append(f"=== {worker.nodename}\n{worker.stacks()}\n--- log tail ---\n{worker.log()[-12000:]}")
    return "\n".join(out)


CONNECTION_WORDS = ("Connected to", "Connection to broker lost", "Cannot connect", "consumer:", "failover",
                    "Trying again", "error", "Error", "mingle", "Prefetch count is now static")  # the last: consuming


def connection_events(workers, fault_at: float) -> str:
    """Each worker's log lines about its broker connection from the fault on, with their time relative to
    the fault: where a lane's stall was spent on the consuming side."""
    from datetime import datetime

    out = []
    for worker in workers:
        for line in worker.log().splitlines():
            if not line.startswith("[") or not any(word in line for word in CONNECTION_WORDS):
                continue
            try:
                at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if at >= fault_at - 1:
                out.append(f"  {worker.nodename} {at - fault_at:+.1f}s {line[25:][:220]}")
    return "\n".join(out)
