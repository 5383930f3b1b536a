"""The README's run command, end to end: the whole stack comes up, works, and Ctrl-C leaves nothing behind."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import rabbit
from tests.support.workers import wait_for

ROOT = Path(settings.BASE_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        out = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True).stdout
        children = {int(p) for p in out.split()}
        frontier.extend(children - found)
        found |= children
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.slow
def test_run_command_starts_the_whole_stack_and_ctrl_c_stops_everything(tmp_path):
    vhost = rabbit.create_vhost("platform-test-run")  # its own vhost: only this stack's workers answer
    web, flower, smtp = free_port(), free_port(), free_port()
    env = {**os.environ, "CELERY_BROKER_URL": rabbit.vhost_url(vhost), "PLATFORM_VAR_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}", "DJANGO_SETTINGS_MODULE": "project.settings.local",
           "WEB_PORT": str(web), "FLOWER_PORT": str(flower), "SMTP_SINK_PORT": str(smtp), "EMAIL_PORT": str(smtp),
           "IO_CONCURRENCY": "20"}
    log = open(tmp_path / "run.log", "wb")
    stack = subprocess.Popen([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        def healthy():
            result = subprocess.run([sys.executable, "manage.py", "health", "--json"], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=60)
            return result.returncode == 0 and json.loads(result.stdout)

        report = wait_for(healthy, timeout=120, interval=2, message="the stack to report healthy")
        assert {w["role"] for w in report["workers"]} == {"cpu", "io"}
        output = (tmp_path / "run.log").read_text()
        password = (tmp_path / "local-admin-password").read_text().strip()
        assert f"http://127.0.0.1:{web}/admin/" in output and f"admin / {password}" in output
        assert f"http://127.0.0.1:{flower}/" in output

        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/admin/login/", timeout=10) as response:
            assert response.status == 200
        request = urllib.request.Request(f"http://127.0.0.1:{flower}/")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(request, timeout=10)
        assert denied.value.code == 401
        import base64
        request.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{password}".encode()).decode())
        assert urllib.request.urlopen(request, timeout=10).status == 200

        demo = subprocess.run([sys.executable, "manage.py", "demo", "--count", "2", "--timeout", "120"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=180)
        assert demo.returncode == 0, demo.stdout + demo.stderr

        processes = descendants(stack.pid) | {stack.pid}
        assert len(processes) >= 7  # supervisor, web, cpu (+children), io, beat, flower, smtp sink
        stack.send_signal(signal.SIGINT)  # Ctrl-C
        stack.wait(timeout=60)
        wait_for(lambda: not [pid for pid in processes if alive(pid)], timeout=30, message="every process to exit")
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
        log.close()
        rabbit.delete_vhost(vhost)
