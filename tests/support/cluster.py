"""The 3-node cluster of bin/cluster for the tests: its nodes, a throwaway vhost on it, worker hosts as
network namespaces running the real start scripts, and the faults (kill -9, restart, link down).

Everything here goes through bin/cluster, the one owner of namespaces, links and node processes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from tests.support.workers import ROOT, Worker

CLUSTER = str(ROOT / "bin" / "cluster")
SUBNET = os.environ.get("CLUSTER_SUBNET", "10.213.0")
PREFIX = os.environ.get("CLUSTER_PREFIX", "plc")
BRIDGE_ADDRESS = f"{SUBNET}.1"  # the root namespace's side of the bridge: the SMTP sink listens here
NODES = (1, 2, 3)


def missing_requirements() -> list[str]:
    """What this machine lacks to run the cluster cases (empty: nothing)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need it)")
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        missing.append("the rabbitmq-server package (bin/services installs it)")
    if not shutil.which("ip"):
        missing.append("ip (iproute2)")
    return missing


def run(*args: str, timeout: float = 300, check: bool = True) -> str:
    try:
        result = subprocess.run([CLUSTER, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # a RuntimeError like any other failure: callers that can recover do
        raise RuntimeError(f"bin/cluster {' '.join(args)} did not finish in {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        raise RuntimeError(f"bin/cluster {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def node_ip(n: int) -> str:
    return f"{SUBNET}.1{n}"


def node_name(n: int) -> str:
    return f"rabbit@{node_ip(n)}"


def node_of(name: str) -> int:
    return next(n for n in NODES if node_name(n) == name)


def is_up() -> bool:
    return subprocess.run([CLUSTER, "status"], capture_output=True, timeout=120).returncode == 0


def ctl(n: int, *args: str, timeout: float = 120) -> str:
    return run("ctl", str(n), "-q", *args, timeout=timeout)


def node_url(n: int, vhost: str) -> str:
    return f"amqp://guest:guest@{node_ip(n)}:5672/{urllib.parse.quote(vhost, safe='')}"


def broker_url(vhost: str, nodes=NODES) -> str:
    """The node list as CELERY_BROKER_URL takes it (settings shuffle it per process)."""
    return ";".join(node_url(n, vhost) for n in nodes)


def create_vhost() -> str:
    vhost = f"cluster-test-{uuid.uuid4().hex[:8]}"
    ctl(1, "add_vhost", vhost)
    ctl(1, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def delete_vhost(vhost: str) -> None:
    for n in NODES:  # any node that still runs can do it
        try:
            ctl(n, "delete_vhost", vhost, timeout=180)
            return
        except (RuntimeError, subprocess.TimeoutExpired):
            continue


def management(path: str, nodes=NODES, timeout: float = 5):
    """GET the management API of the first node that answers."""
    error = None
    for n in nodes:
        request = urllib.request.Request(f"http://{node_ip(n)}:15672/api/{path}")
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except OSError as exc:
            error = exc
    raise RuntimeError(f"no management API answered: {error}")


def queues(vhost: str, nodes=NODES) -> dict[str, dict]:
    quoted = urllib.parse.quote(vhost, safe="")
    return {q["name"]: q for q in management(f"queues/{quoted}", nodes)}


def leader_of(vhost: str, queue: str, nodes=NODES) -> int:
    quoted = urllib.parse.quote(vhost, safe="")
    return node_of(management(f"queues/{quoted}/{urllib.parse.quote(queue, safe='')}", nodes)["leader"])


def kill_node(n: int) -> None:
    run("kill", str(n))


def start_node(n: int) -> None:
    # A boot takes seconds; on RabbitMQ 3.10.8 one sometimes hangs for good after a kill -9 of two nodes (a CI
    # cluster pass: `bin/cluster start 2` still waiting after 300 s). Bounded, it fails as a RuntimeError, which
    # the fault cases answer by restarting the node (tests/cluster/test_node_faults.py, whole_again).
    run("start", str(n), timeout=180)


def stop_node(n: int) -> None:
    """A graceful stop, as an upgrade does it."""
    ctl(n, "stop", timeout=180)


def cut(name: str) -> None:
    """Take the link of a node ("r2") or a worker host ("cpu1") down: a real partition."""
    run("cut", name)


def heal(name: str) -> None:
    run("heal", name)


class HostWorker(Worker):
    """A worker role started from compose/start/<role> inside a worker host's network namespace."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host

    def start(self) -> "HostWorker":
        self.open_log()
        self.proc = subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-{self.host}", str(ROOT / "compose" / "start" / self.role)],
                                     cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self
