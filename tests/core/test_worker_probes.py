"""Worker probe files (apps/core/probes.py) read by the probe script the Kubernetes manifests run.

Real workers from compose/start/<role>, each in its own vhost so a test can take the broker away from
its worker (permissions cleared, connections closed) without touching any other worker.
"""
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import rabbit
from tests.support.tasks import cpu_echo, io_block_hub
from tests.support.workers import Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROBE = Path(settings.BASE_DIR) / "compose" / "probes" / "worker"
HEARTBEAT_SECONDS = 0.5
STALE_AFTER = 3  # seconds: six missed heartbeats


def probe(directory: Path, what: str) -> bool:
    """Run the probe script as the kubelet would; True when it passes."""
    env = {**os.environ, "PLATFORM_PROBE_DIR": str(directory), "PLATFORM_PROBE_MAX_AGE": str(STALE_AFTER)}
    return subprocess.run([str(PROBE), what], env=env, capture_output=True, timeout=10).returncode == 0


def heartbeat_mtime(directory: Path) -> float:
    return (directory / "heartbeat").stat().st_mtime


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def take_broker_away(vhost: str) -> None:
    """The broker is gone for this vhost's clients: they are disconnected and cannot reconnect."""
    rabbit.rabbitmqctl("clear_permissions", "-p", vhost, "guest")
    for pid in rabbit.rabbitmqctl("list_connections", "-p", vhost, "pid", "--no-table-headers").split():
        rabbit.rabbitmqctl("close_connection", pid, "test: broker connection gone")


def give_broker_back(vhost: str) -> None:
    rabbit.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


def probe_env(directory: Path) -> dict:
    return {"PLATFORM_PROBE_DIR": str(directory), "PLATFORM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)}


def test_prefork_worker_is_ready_only_once_consuming_and_goes_stale_without_its_broker(worker_db_url, tmp_path):
    directory = tmp_path / "probes"
    with rabbit.own_vhost("platform-k8s") as url:
        vhost = vhost_of(url)
        take_broker_away(vhost)  # the worker starts while it cannot connect
        worker = Worker("cpu", url, worker_db_url, env={"CPU_CONCURRENCY": "1", **probe_env(directory)}).start()
        try:
            wait_for(lambda: "Cannot connect" in worker.log(), timeout=60, message="a refused connection attempt")
            assert worker.alive()
            assert not probe(directory, "ready") and not probe(directory, "live")

            give_broker_back(vhost)
            # Not worker.wait_ready() first: a worker answers pings while it is still starting (during mingle),
            # before its consumer loop runs; the readiness file waits for the loop.
            wait_for(lambda: probe(directory, "ready"), timeout=60, message="the readiness file")
            worker.wait_ready()
            assert probe(directory, "live")
            assert cpu_echo.delay("served").get(timeout=60)["value"] == "served"
            first = heartbeat_mtime(directory)
            wait_for(lambda: heartbeat_mtime(directory) > first, timeout=10, message="the next heartbeat")

            take_broker_away(vhost)
            wait_for(lambda: not probe(directory, "live"), timeout=60, message="a stale heartbeat")
            assert not probe(directory, "ready")
            assert worker.alive()  # retrying its connection: the probe, not the worker, calls it dead

            give_broker_back(vhost)
            wait_for(lambda: probe(directory, "live") and probe(directory, "ready"), timeout=60,
                     message="fresh probes after the broker came back")
        finally:
            give_broker_back(vhost)
            worker.stop()


def test_eventlet_worker_heartbeat_goes_stale_while_its_loop_is_stuck(worker_db_url, tmp_path):
    directory = tmp_path / "probes"
    with rabbit.own_vhost("platform-k8s") as url:
        worker = Worker("io", url, worker_db_url, env={"IO_CONCURRENCY": "10", **probe_env(directory)}).start()
        try:
            worker.wait_ready()
            wait_for(lambda: probe(directory, "live"), timeout=10, message="a fresh heartbeat")
            marks = tmp_path / "marks.log"
            result = io_block_hub.delay(STALE_AFTER * 4, str(marks))
            wait_for(lambda: marks.exists(), timeout=30, message="the blocking task to start")
            wait_for(lambda: not probe(directory, "live"), timeout=STALE_AFTER * 4,
                     message="a stale heartbeat while the hub is blocked")
            assert result.get(timeout=60) == STALE_AFTER * 4
            wait_for(lambda: probe(directory, "live"), timeout=10, message="a fresh heartbeat after the block")
            assert probe(directory, "ready")
        finally:
            worker.stop()
