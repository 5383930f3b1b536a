"""Worker probe files (apps/core/probes.py) read by the probe script the Kubernetes manifests run.

Real workers from compose/start/<role>, each in its own vhost. The prefork worker reaches RabbitMQ through
a loopback TCP proxy, so the test can take the broker away from it (connections dropped, reconnects
refused) and give it back, without touching RabbitMQ or any other worker.
"""
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import rabbit
from tests.support.proxy import TcpProxy
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


def probe_env(directory: Path) -> dict:
    return {"PLATFORM_PROBE_DIR": str(directory), "PLATFORM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)}


def test_prefork_worker_is_ready_only_once_consuming_and_goes_stale_without_its_broker(worker_db_url, tmp_path):
    directory = tmp_path / "probes"
    proxy = TcpProxy()  # not listening yet: the worker starts while the broker is unreachable
    with rabbit.own_vhost("platform-k8s") as url:
        worker_url = url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
        worker = Worker("cpu", worker_url, worker_db_url, env={"CPU_CONCURRENCY": "1", **probe_env(directory)}).start()
        try:
            wait_for(lambda: "Cannot connect" in worker.log(), timeout=60, message="a refused connection attempt")
            assert worker.alive()
            assert not probe(directory, "ready") and not probe(directory, "live")

            proxy.start()
            # Not worker.wait_ready() first: a worker answers pings while it is still starting (during mingle),
            # before its consumer loop runs; the readiness file waits for the loop.
            wait_for(lambda: probe(directory, "ready"), timeout=60, message="the readiness file")
            worker.wait_ready()
            assert probe(directory, "live")
            assert cpu_echo.delay("served").get(timeout=60)["value"] == "served"
            first = heartbeat_mtime(directory)
            wait_for(lambda: heartbeat_mtime(directory) > first, timeout=10, message="the next heartbeat")

            proxy.stop()
            wait_for(lambda: not probe(directory, "live"), timeout=60, message="a stale heartbeat")
            assert not probe(directory, "ready")
            assert worker.alive()  # retrying its connection: the probe, not the worker, calls it dead

            proxy.start()
            wait_for(lambda: probe(directory, "live") and probe(directory, "ready"), timeout=90,
                     message="fresh probes after the broker came back")
            assert cpu_echo.delay("served again").get(timeout=60)["value"] == "served again"
        finally:
            worker.stop()
            proxy.stop()


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
