"""One beat at a time: two beats never dispatch the same slot; a standby takes over when the leader dies."""
import json
import signal
import time

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from apps.core import leader
from apps.core.models import BeatLease
from tests.support.workers import ProcessRole, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
LEASE = 4  # seconds, short for the test (production default 15)


def every_two_seconds(effects_path: str) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name="leader test", task="tests.io.mark", interval=interval,
                                       kwargs=json.dumps({"path": effects_path, "text": "tick"}))


def tick_times(effects) -> list[float]:
    return [float(line.split()[0]) for line in effects.lines() if "tick" in line]


def start_beat(broker_url, worker_db_url) -> ProcessRole:
    return ProcessRole("beat", broker_url, worker_db_url, env={"PLATFORM_BEAT_LEASE_SECONDS": str(LEASE)}).start()


def test_the_lease_has_one_holder_at_a_time():
    assert leader.acquire_or_renew("a", 30)
    assert not leader.acquire_or_renew("b", 30)
    assert leader.acquire_or_renew("a", 30)  # renewal
    leader.release("a")
    assert leader.acquire_or_renew("b", 30)
    assert BeatLease.objects.get().holder == "b"


def test_two_beats_started_together_dispatch_each_slot_once(io_worker, broker_url, worker_db_url, effects):
    every_two_seconds(effects.path)
    beats = [start_beat(broker_url, worker_db_url), start_beat(broker_url, worker_db_url)]
    try:
        time.sleep(16)
    finally:
        # The standby first: a leader shutting down cleanly releases the lease, and a standby still
        # running would rightly take it over while the leader is being stopped.
        beats.sort(key=lambda beat: "is now the leader" in beat.log())
        for beat in beats:
            beat.stop()
    times = tick_times(effects)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 5, times
    assert min(gaps) > 1.0, f"two dispatches of one slot: gaps {gaps}"  # slots are 2 s apart
    logs = [beat.log() for beat in beats]
    assert sum("is now the leader" in log for log in logs) == 1
    assert sum("standing by" in log for log in logs) == 1


def test_a_standby_takes_over_within_the_lease_when_the_leader_is_killed(io_worker, broker_url, worker_db_url, effects):
    every_two_seconds(effects.path)
    first = start_beat(broker_url, worker_db_url)
    wait_for(lambda: "is now the leader" in first.log(), timeout=60, message="a leader")
    second = start_beat(broker_url, worker_db_url)
    try:
        wait_for(lambda: "standing by" in second.log(), timeout=60, message="a standby")
        wait_for(lambda: len(tick_times(effects)) >= 2, timeout=30, message="the leader to dispatch")
        first.kill(signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: "is now the leader" in second.log(), timeout=LEASE + 30, message="the standby to take over")
        wait_for(lambda: any(t > killed_at for t in tick_times(effects)), timeout=30, message="a dispatch after the kill")
        resumed = min(t for t in tick_times(effects) if t > killed_at)
        failover = resumed - killed_at
        print(f"failover: first dispatch {failover:.1f}s after kill -9 of the leader (lease {LEASE}s)")
        assert failover <= LEASE + 5 + 2  # lease expiry + one beat loop + one slot
        times = tick_times(effects)
        assert min(b - a for a, b in zip(times, times[1:])) > 1.0, times  # no slot fired twice around the kill
    finally:
        second.stop()
        first.stop()


def test_a_beat_killed_and_restarted_does_not_fire_a_slot_twice(io_worker, broker_url, worker_db_url, effects):
    every_two_seconds(effects.path)
    beat = start_beat(broker_url, worker_db_url)
    try:
        wait_for(lambda: len(tick_times(effects)) >= 2, timeout=60, message="two dispatches")
        beat.kill(signal.SIGKILL)
        beat.stop()
        beat = start_beat(broker_url, worker_db_url)  # the restart waits for the old lease to expire
        before = len(tick_times(effects))
        wait_for(lambda: len(tick_times(effects)) >= before + 2, timeout=LEASE + 30, message="dispatches after restart")
        times = tick_times(effects)
        assert min(b - a for a, b in zip(times, times[1:])) > 1.0, times
    finally:
        beat.stop()
