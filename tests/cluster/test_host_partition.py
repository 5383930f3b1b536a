"""A worker host cut off from the cluster for longer than the heartbeat, then healed, under load.

io1's link goes down while it holds unacknowledged mail-lane work; RabbitMQ drops its connection after the
missed heartbeats and redelivers that work to io2; io1's late acknowledgements, after the heal, hit a
closed channel and harm nothing. Counted like the node cases (var/cluster-report.md).
"""
import time

import pytest

from project import topology
from tests.cluster.conftest import HEARTBEAT
from tests.cluster.load import Load
from tests.support import cluster
from tests.support.workers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


def test_worker_host_partition_longer_than_the_heartbeat_then_healed(cluster_vhost, cluster_db_url, host_workers,
                                                                    tmp_path):
    cluster.run("host-up", "io2", "23")
    second = cluster.HostWorker("io2", "io", cluster.broker_url(cluster_vhost), cluster_db_url,
                                env={"CELERY_BROKER_HEARTBEAT": str(HEARTBEAT), "IO_CONCURRENCY": "20"})
    try:
        second.start().wait_ready(timeout=120)
        cut_off = host_workers["io"]
        load = Load(tmp_path).start()
        try:
            wait_for(lambda: len(load.effects(topology.MAIL)) >= 50, timeout=60, message="load on the mail lane")
            fault_at = time.time()
            cluster.cut("io1")
            time.sleep(3 * HEARTBEAT)  # past RabbitMQ's missed-heartbeat limit: io1's unacked work is requeued
            cluster.heal("io1")
            wait_for(lambda: "Connected to amqp" in cut_off.log()[-20000:], timeout=120, message="io1 reconnecting")
            time.sleep(5)
        finally:
            cluster.heal("io1")
            load.stop()
        load.wait_processed()
        outcome = load.account(f"worker host io1 cut off {3 * HEARTBEAT} s (heartbeat {HEARTBEAT} s), healed; io2 "
                               "takes its work", cluster.broker_url(cluster_vhost), fault_at)
        io2_ran = sum(1 for line in (tmp_path / topology.MAIL / "attempts.log").read_text().splitlines()
                      if line.split()[1] in {str(pid) for pid in [second.pid, *second.children()]})
    finally:
        second.stop()
        cluster.run("host-down", "io2", check=False)

    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.confirmed > 100 and outcome.executed == outcome.confirmed - outcome.dead_lettered
    assert io2_ran > 0, "io2 never ran mail-lane work"
    assert outcome.stall <= 2 * HEARTBEAT, f"processing stalled {outcome.stall:.1f}s (> two heartbeats)"
    assert cut_off.alive(), cut_off.log()[-3000:]
    assert "Connection to broker lost" in cut_off.log() or "missed heartbeats" in cut_off.log(), cut_off.log()[-3000:]
