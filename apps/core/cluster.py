"""A broker that may be several RabbitMQ nodes: the URL list, connections that fail over, and what
`manage.py health` says about each node and where each queue's leader is.

CELERY_BROKER_URL may name several nodes of one cluster, ``amqp://a//;amqp://b//;amqp://c//`` (kombu's
failover list). Every broker connection the platform opens goes through ``connection()`` (Celery's
``connection_for_write``), so it gets the whole list, the failover strategy and the transport options
(publisher confirms) from settings, and moves to the next node when its node goes away.

Leaders and members come from the management plugin's HTTP API (the same API KEDA's RabbitMQ scaler
reads); a node without the plugin still gets its up/down line from an AMQP connect.
"""
from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url, parse_url

from apps.core.compat import FailoverConnection
from project import topology


class ClusterConnection(FailoverConnection, Connection):
    """The platform's broker connection (``PlatformAMQP.Connection``: Celery builds every connection from it,
    and its pool hands out the same kind). On a node list it fails over without declaring its queues again,
    without the closing handshake with the node it leaves, and past nodes found unreachable just now
    (apps/core/compat.py, with the measurements)."""


def broker_urls(url: str | None = None) -> list[str]:
    """The nodes of ``url`` (default: the configured broker), in the order this process tries them."""
    from project.celery import app

    return [part.strip() for part in (url or app.conf.broker_url).split(";") if part.strip()]


def connection(url: str | None = None, **kwargs) -> Connection:
    """A connection to the broker (the whole node list, failover strategy and transport options of
    settings). Not yet connected: use it in a ``with`` block like any kombu Connection."""
    from project.celery import app

    if url == app.conf.broker_url:  # the configured list: start from this process's shuffled order (settings)
        url = None
    return app.connection_for_write(url, **kwargs)


@dataclass
class Node:
    url: str  # sanitized, no password
    up: bool
    error: str = ""
    name: str = ""  # RabbitMQ's node name, from the management API when it answers


@dataclass
class QueuePlacement:
    name: str
    leader: str | None
    members: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)


def _amqp_up(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with Connection(url, connect_timeout=timeout) as conn:
            conn.connect()
        return True, ""
    except Exception as exc:  # any failure is "down" for this node; the message says why
        return False, str(exc) or exc.__class__.__name__


def _management_get(url: str, path: str, timeout: float):
    parts = parse_url(url)
    from django.conf import settings

    port = getattr(settings, "PLATFORM_BROKER_MANAGEMENT_PORT", 15672)
    request = urllib.request.Request(f"http://{parts['hostname']}:{port}/api/{path}")
    credentials = f"{parts.get('userid') or 'guest'}:{parts.get('password') or 'guest'}"
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _vhost(url: str) -> str:
    return parse_url(url).get("virtual_host") or "/"


def cluster_report(url: str | None = None, timeout: float = 2.0) -> dict:
    """Every node of the broker URL list (up or down, by an AMQP connect) and, from the first node whose
    management API answers, each platform queue's leader, members and online members."""
    urls = broker_urls(url)
    nodes = []
    for node_url in urls:
        up, error = _amqp_up(node_url, timeout)
        nodes.append(Node(maybe_sanitize_url(node_url), up, error))

    placements: list[QueuePlacement] = []
    management_error = "no node answered"
    wanted = set(topology.all_queue_names())
    for node, node_url in zip(nodes, urls):
        if not node.up:
            continue
        try:
            overview = _management_get(node_url, "overview", timeout)
            queues = _management_get(
                node_url, f"queues/{urllib.parse.quote(_vhost(node_url), safe='')}?columns=name,leader,members,online,node",
                timeout)
        except Exception as exc:  # plugin off, port closed: try the next node
            management_error = f"management API of {node.url}: {exc}"
            continue
        node.name = overview.get("node", "")
        for queue in sorted(queues, key=lambda q: q["name"]):
            if queue["name"] in wanted:
                placements.append(QueuePlacement(queue["name"], queue.get("leader") or queue.get("node"),
                                                 sorted(queue.get("members") or []), sorted(queue.get("online") or [])))
        management_error = ""
        break

    problems = [f"broker node {n.url} is down ({n.error})" for n in nodes if not n.up] if len(nodes) > 1 else []
    for placement in placements:
        if not placement.leader:
            problems.append(f"queue {placement.name} has no leader")
        elif placement.members and len(placement.online) <= len(placement.members) // 2:
            problems.append(f"queue {placement.name} has {len(placement.online)} of {len(placement.members)} members online (no majority)")
    return {
        "nodes": [vars(n) for n in nodes],
        "queues": [vars(p) for p in placements],
        "management": management_error or "ok",
        "problems": problems,
    }
