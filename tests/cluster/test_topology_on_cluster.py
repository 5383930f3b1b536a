"""The topology on the live 3-node cluster: every work queue and dead-letter queue has three members."""
import os

import pytest

from apps.core.cluster import cluster_report
from project import topology
from tests.support import cluster

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


def test_every_work_and_dead_letter_queue_has_three_members_on_three_nodes(cluster_vhost, host_workers):
    # The workers on the hosts declared the work queues and dead-letter queues when they started.
    found = cluster.queues(cluster_vhost)
    every_node = {cluster.node_name(n) for n in cluster.NODES}
    for name in topology.all_queue_names():
        queue = found[name]
        assert queue["type"] == "quorum", name
        # Set explicitly (RabbitMQ's own default would also be "every node" here, so check the argument too).
        assert queue["arguments"].get("x-quorum-initial-group-size") == 3, (name, queue["arguments"])
        assert set(queue["members"]) == every_node, (name, queue["members"])
        assert set(queue["online"]) == every_node, (name, queue["online"])
        assert queue["leader"] in every_node


def test_health_reports_every_node_and_each_queues_leader(cluster_vhost, host_workers):
    report = cluster_report(cluster.broker_url(cluster_vhost))
    assert [node["up"] for node in report["nodes"]] == [True, True, True]
    leaders = {q["name"]: q for q in report["queues"]}
    assert set(leaders) == set(topology.all_queue_names())
    assert all(len(q["members"]) == 3 and q["leader"] for q in leaders.values())
    assert report["problems"] == []


def test_workers_run_inside_their_host_namespaces(host_workers):
    own = os.readlink("/proc/self/ns/net")
    spaces = {os.readlink(f"/proc/{worker.pid}/ns/net") for worker in host_workers.values()}
    assert own not in spaces and len(spaces) == 2  # each on its own host, the publisher outside them
