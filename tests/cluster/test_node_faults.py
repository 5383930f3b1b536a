"""RabbitMQ node faults under load: kill -9 of the leader, a rolling restart, a minority partition, the
loss of a majority. Each case publishes and processes throughout and appends its row to
var/cluster-report.md (docs/reliability.md has the latest table).

Targets: 0 confirmed messages lost, 0 duplicated effects; after a single-node loss processing resumes
within two heartbeat intervals.
"""
import subprocess
import time

import pytest

from project import topology
from tests.cluster.conftest import HEARTBEAT
from tests.cluster.load import Load, connection_events
from tests.support import cluster
from tests.support.tasks import cpu_echo, io_echo
from tests.support.workers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


def all_members_online(vhost: str) -> bool:
    found = cluster.queues(vhost)
    return all(len(found.get(name, {}).get("online") or []) == 3 for name in topology.all_queue_names())


def wait_cluster_whole(vhost: str, timeout: float = 240) -> None:
    """Three running nodes and every platform queue with three members online again."""
    def whole():
        try:
            return cluster.is_up() and all_members_online(vhost)
        except RuntimeError:
            return False

    wait_for(whole, timeout=timeout, interval=2, message="all three nodes and every queue member back")


def _booted(n: int) -> bool:
    try:
        cluster.ctl(n, "-t", "10", "await_startup", timeout=30)
        return True
    except (RuntimeError, subprocess.TimeoutExpired):
        return False


def whole_again(vhost: str, restarted, within: float = 90) -> None:
    """Wait until the nodes brought back rejoin and every queue member is online.

    Known limit (docs/reliability.md): on RabbitMQ 3.10.8 a node's boot sometimes hangs or fails after a
    partition heal (mnesia "inconsistent_database") or after a kill -9 of two nodes (a feature-flag sync
    error; the rabbit app never starts). Such a node is restarted (kill -9, start), as an operator would,
    and the test says so. The platform's guarantees the cases assert do not depend on it.
    """
    names = ", ".join(cluster.node_name(n) for n in restarted)
    try:
        wait_cluster_whole(vhost, timeout=within)
        print(f"{names} rejoined by themselves")
        return
    except AssertionError:
        pass
    stuck = [n for n in restarted if not _booted(n)] or list(restarted)
    print(f"{', '.join(cluster.node_name(n) for n in stuck)} did NOT rejoin within {within:.0f} s: restarted")
    for n in stuck:
        cluster.kill_node(n)
        cluster.start_node(n)
    wait_cluster_whole(vhost)


def _leader_or_none(vhost: str, nodes) -> int | None:
    try:
        return cluster.leader_of(vhost, topology.DATASET, nodes=nodes)
    except (RuntimeError, KeyError, StopIteration):
        return None


def assert_workers_serve(workers) -> None:
    for worker in workers.values():
        worker.assert_alive()
    assert cpu_echo.delay("after").get(timeout=60)["value"] == "after"
    assert io_echo.delay("after").get(timeout=60)["value"] == "after"


def test_kill_9_of_the_node_leading_dataset_and_mail(cluster_vhost, host_workers, tmp_path):
    leader = cluster.leader_of(cluster_vhost, topology.DATASET)
    assert cluster.leader_of(cluster_vhost, topology.MAIL) == leader  # declared from one node (conftest)
    load = Load(tmp_path).start()
    try:
        wait_for(lambda: len(load.effects(topology.DATASET)) >= 20 and len(load.effects(topology.MAIL)) >= 20,
                 timeout=60, message="load running on both lanes")
        fault_at = time.time()
        cluster.kill_node(leader)
        time.sleep(2 * HEARTBEAT + 5)  # keep publishing and processing on the two survivors
        new_leaders = {q: cluster.leader_of(cluster_vhost, q, nodes=[n for n in cluster.NODES if n != leader])
                       for q in (topology.DATASET, topology.MAIL)}
    finally:
        load.stop()
    load.wait_processed(host_workers.values())
    outcome = load.account(f"kill -9 of the node leading dataset and mail ({cluster.node_name(leader)})",
                           cluster.broker_url(cluster_vhost), fault_at)
    print(connection_events(host_workers.values(), fault_at))
    cluster.start_node(leader)
    wait_cluster_whole(cluster_vhost)

    assert all(node != leader for node in new_leaders.values()), new_leaders
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.confirmed > 100 and outcome.executed == outcome.confirmed - outcome.dead_lettered
    assert outcome.stall <= 2 * HEARTBEAT, f"processing stalled {outcome.stall:.1f}s (> two heartbeats)"
    assert_workers_serve(host_workers)


def test_rolling_restart_of_all_three_nodes(cluster_vhost, host_workers, tmp_path):
    load = Load(tmp_path).start()
    try:
        wait_for(lambda: len(load.effects(topology.DATASET)) >= 20, timeout=60, message="load running")
        fault_at = time.time()
        for n in cluster.NODES:  # one at a time, as an upgrade does it: stop, start, wait for it to catch up
            cluster.stop_node(n)
            time.sleep(3)
            cluster.start_node(n)
            wait_cluster_whole(cluster_vhost)
        time.sleep(5)
    finally:
        load.stop()
    load.wait_processed(host_workers.values())
    outcome = load.account("rolling restart of all three nodes (rabbitmqctl stop, start, catch up)",
                           cluster.broker_url(cluster_vhost), fault_at)
    print(connection_events(host_workers.values(), fault_at))
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.confirmed > 100 and outcome.executed == outcome.confirmed - outcome.dead_lettered
    assert outcome.stall <= 2 * HEARTBEAT, f"processing stalled {outcome.stall:.1f}s (> two heartbeats)"
    assert_workers_serve(host_workers)


def test_minority_partition_of_the_leading_node(cluster_vhost, host_workers, tmp_path):
    leader = cluster.leader_of(cluster_vhost, topology.DATASET)
    others = [n for n in cluster.NODES if n != leader]
    load = Load(tmp_path).start()
    try:
        wait_for(lambda: len(load.effects(topology.DATASET)) >= 20, timeout=60, message="load running")
        fault_at = time.time()
        cluster.cut(f"r{leader}")  # its link down: it and everyone connected to it are cut off
        # The majority side elects new leaders; clients on the cut node notice (heartbeat, confirm timeout)
        # and fail over. Held past the nodes' net_ticktime so pause_minority pauses the cut node.
        time.sleep(3 * HEARTBEAT)
        # The majority side's management API waits for the cut node until net_ticktime declares it down.
        new_leader = wait_for(lambda: _leader_or_none(cluster_vhost, others), timeout=60, interval=1,
                              message="the majority side to report a dataset leader")
        cluster.heal(f"r{leader}")
        time.sleep(5)
    finally:
        cluster.heal(f"r{leader}")
        load.stop()
    load.wait_processed(host_workers.values())
    outcome = load.account(f"minority partition: the node leading dataset ({cluster.node_name(leader)}) cut off "
                           f"{3 * HEARTBEAT} s, healed", cluster.broker_url(cluster_vhost), fault_at)
    print(connection_events(host_workers.values(), fault_at))
    whole_again(cluster_vhost, [leader])
    assert new_leader != leader
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.confirmed > 100 and outcome.executed == outcome.confirmed - outcome.dead_lettered
    # "Processing resumes within two heartbeat intervals after a single-node loss", for the processing and
    # for the publisher that was on the cut node (it has no heartbeat: its publish fails over through
    # apps/core/compat.py, which skips the re-declare and the cut node; docs/reliability.md has the steps).
    assert outcome.stall <= 2 * HEARTBEAT, f"processing stalled {outcome.stall:.1f}s (> two heartbeats)"
    assert outcome.longest_publish <= 2 * HEARTBEAT, f"a publish waited {outcome.longest_publish:.1f}s"
    assert_workers_serve(host_workers)


def test_majority_loss_gives_clear_errors_then_resumes_by_itself(cluster_vhost, host_workers, tmp_path, admin_client):
    from django.conf import settings

    from apps.control.api_errors import json_exception_handler

    survivor = cluster.leader_of(cluster_vhost, topology.DATASET)
    lost = [n for n in cluster.NODES if n != survivor]
    confirm_timeout = settings.CELERY_BROKER_TRANSPORT_OPTIONS["confirm_timeout"]
    load = Load(tmp_path, pause=0.05).start()
    try:
        wait_for(lambda: len(load.effects(topology.DATASET)) >= 20, timeout=60, message="load running")
        fault_at = time.time()
        for n in lost:
            cluster.kill_node(n)
        time.sleep(3 * confirm_timeout)  # publishers must get errors, not hang
        during = len(load.publishes)
        health = admin_client.get("/api/v1/health/")
        restored_at = time.time()
        for n in lost:
            try:
                cluster.start_node(n)
            except RuntimeError as exc:  # its boot failed: whole_again restarts it
                print(exc)
        whole_again(cluster_vhost, lost)
        wait_for(lambda: any(p.confirmed and p.started > restored_at for p in load.publishes), timeout=120,
                 message="publishing to resume by itself")
        time.sleep(5)
    finally:
        load.stop()
    load.wait_processed(host_workers.values())
    outcome = load.account(f"majority loss: kill -9 of 2 of 3 nodes for {3 * confirm_timeout} s, restarted",
                           cluster.broker_url(cluster_vhost), restored_at)
    failed = [p for p in load.publishes if p.error and fault_at <= p.started <= restored_at]
    print("errors during the outage:", sorted({p.error[:160] for p in failed})[:5])

    assert failed, "publishing without a majority must fail to the caller"
    assert outcome.longest_publish <= confirm_timeout + 5, f"a publish waited {outcome.longest_publish:.1f}s"
    assert outcome.lost == 0 and outcome.duplicated == 0, outcome
    assert outcome.executed == outcome.confirmed - outcome.dead_lettered
    # What the HTTP API answers for the error a publisher got: 503 with the reason (not 429, not 500).
    response = json_exception_handler(failed[-1].exc, {})
    assert response is not None and response.status_code == 503, (response and response.data, failed[-1].error)
    assert health.status_code == 503
    assert any("down" in problem for problem in health.json()["problems"]), health.json()["problems"]
    assert during > 0
    assert_workers_serve(host_workers)
