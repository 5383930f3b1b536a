"""Chords complete once, with every part, even when a part is delivered (and returns) twice."""
import pytest
from django_celery_results.models import ChordCounter

from tests.core.test_delivery import sole_consumer_of
from tests.support.tasks import cpu_echo, cpu_returns_twice, cpu_sleep
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chord_part_that_returns_twice_still_waits_for_the_others_and_the_body_runs_once(
        start_worker, effects, tmp_path):
    from celery import chord

    first = start_worker("cpu", env={"CPU_CONCURRENCY": "2"})
    slow_log = str(tmp_path / "slow.log")
    with sole_consumer_of("dataset", first.nodename):
        # Part 1 returns, then its worker dies with both messages unacked; both are redelivered to the next
        # worker, where part 1 (fast) returns a second time while part 2 still sleeps. The stock counter was
        # decremented twice there: zero with part 2 running, the counter deleted, the body never sent.
        result = chord([cpu_returns_twice.s(effects.path), cpu_sleep.s(3, slow_log)])(cpu_echo.s())
        wait_for(lambda: not first.alive(), timeout=60, message="the first worker to die after part 1 returned")
        second = start_worker("cpu", env={"CPU_CONCURRENCY": "2"})
        with sole_consumer_of("dataset", second.nodename):
            body = result.get(timeout=90)
    assert effects.count("ran") == 2, "part 1 ran on both workers"
    assert body["value"] == ["twice", 3]
    assert not ChordCounter.objects.filter(group_id=result.parent.id).exists()
