"""RabbitMQ stopped and started (rabbitmqctl stop_app / start_app) while publishing and while processing.

The promise: every publish is either confirmed or raises to its caller (none hangs), nothing confirmed is
lost, and workers reconnect by themselves. These cases stop the whole broker: they run alone (CI runs the
suite serially), and the session's shared workers must come back too, which later tests rely on.
"""
import threading
import time

import pytest

from apps.core.bulk import enqueue_many
from tests.reliability.faults import account
from tests.support import rabbit
from tests.support.tasks import cpu_echo, cpu_effect, io_echo, io_effect
from tests.support.workers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OUTAGE_SECONDS = 5


def restart_rabbitmq(outage: float = OUTAGE_SECONDS) -> None:
    rabbit.rabbitmqctl("stop_app")
    time.sleep(outage)
    rabbit.rabbitmqctl("start_app")
    rabbit.rabbitmqctl("await_startup")


def effects(directory) -> set[str]:
    return {p.name.removeprefix("effect-") for p in directory.iterdir() if p.name.startswith("effect-")}


def test_rabbitmq_restart_while_publishing_every_publish_is_confirmed_or_raises(start_worker, broker_url, tmp_path):
    worker = start_worker("io", env={"IO_CONCURRENCY": "20"})
    outcomes: dict[str, str] = {}  # key -> "confirmed" or the exception the caller got
    longest = [0.0]
    stop = threading.Event()

    def publish_one_at_a_time():
        for i in range(1_000_000):
            if stop.is_set():
                return
            key, started = f"k{i}", time.monotonic()
            try:
                io_effect.apply_async((str(tmp_path), key))
                outcomes[key] = "confirmed"
            except Exception as exc:  # noqa: BLE001 - any error is an answer; what must not happen is silence
                outcomes[key] = f"{type(exc).__name__}: {exc}"
            longest[0] = max(longest[0], time.monotonic() - started)
            time.sleep(0.005)

    publisher = threading.Thread(target=publish_one_at_a_time, daemon=True)
    publisher.start()
    time.sleep(2)
    before = len(outcomes)
    restart_rabbitmq()
    restarted_at = len(outcomes)
    wait_for(lambda: sum(v == "confirmed" for k, v in list(outcomes.items())[restarted_at:]) >= 50, timeout=60,
             message="publishing to recover after the restart")
    stop.set()
    publisher.join(timeout=60)

    assert not publisher.is_alive(), "a publish hung"
    assert longest[0] < 30, f"a publish took {longest[0]:.1f}s to answer"
    confirmed = [k for k, v in outcomes.items() if v == "confirmed"]
    raised = {k: v for k, v in outcomes.items() if v != "confirmed"}
    print(f"publishes: {len(outcomes)}, confirmed {len(confirmed)}, raised {len(raised)}, longest {longest[0]:.2f}s, "
          f"errors: {sorted({v.split(':')[0] for v in raised.values()})}")
    assert before > 0 and raised, "the outage must have been seen by callers, as errors"
    assert all("OperationalError" in v or "Connection" in v or "Error" in v for v in raised.values())
    wait_for(lambda: set(confirmed) <= effects(tmp_path), timeout=120, message="every confirmed task to run")
    outcome = account("RabbitMQ stop_app/start_app while publishing", tmp_path, confirmed, len(confirmed),
                      broker_url, "ops_trace", published=len(outcomes))
    assert outcome.lost == 0 and outcome.executed == len(confirmed)
    assert worker.alive()
    assert io_echo.delay("after").get(timeout=60)["value"] == "after"  # the worker reconnected by itself


def test_rabbitmq_restart_while_processing_loses_nothing_and_workers_reconnect(start_worker, broker_url, tmp_path):
    cpu = start_worker("cpu", env={"CPU_CONCURRENCY": "2"})
    io = start_worker("io", env={"IO_CONCURRENCY": "20"})
    cpu_dir, io_dir = tmp_path / "cpu", tmp_path / "io"
    cpu_dir.mkdir(), io_dir.mkdir()
    cpu_keys = [f"c{i}" for i in range(60)]
    io_keys = [f"i{i}" for i in range(300)]
    assert len(enqueue_many(cpu_effect.s(str(cpu_dir), k, seconds=0.2) for k in cpu_keys)) == len(cpu_keys)
    assert len(enqueue_many(io_effect.s(str(io_dir), k, seconds=0.2) for k in io_keys)) == len(io_keys)
    wait_for(lambda: len(effects(cpu_dir)) >= 5 and len(effects(io_dir)) >= 20, timeout=60, message="work in progress")
    restart_rabbitmq()

    wait_for(lambda: effects(cpu_dir) >= set(cpu_keys) and effects(io_dir) >= set(io_keys), timeout=240,
             message="every task after the restart")
    for case, directory, keys, queue in (("cpu", cpu_dir, cpu_keys, "dataset"), ("io", io_dir, io_keys, "ops_trace")):
        outcome = account(f"RabbitMQ stop_app/start_app while processing ({case})", directory, keys, len(keys),
                          broker_url, queue)
        assert outcome.lost == 0 and outcome.executed == len(keys)
    assert cpu.alive() and io.alive()
    for worker in (cpu, io):
        assert "Connection to broker lost" in worker.log() or "consumer: Cannot connect" in worker.log(), worker.log()[-3000:]
    assert cpu_echo.delay("after").get(timeout=60)["value"] == "after"  # both reconnected by themselves
    assert io_echo.delay("after").get(timeout=60)["value"] == "after"
