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
from tests.support.net import free_port
from tests.support.workers import wait_for

ROOT = Path(settings.BASE_DIR)


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


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_run_command_starts_the_whole_stack_and_ctrl_c_stops_everything(tmp_path):
    """`bin/run | cat`, then Ctrl-C: the terminal's SIGINT reaches bin/run and cat alike; cat dies first,
    and the supervisor must still stop every process and free every port (issue 16)."""
    vhost = rabbit.create_vhost("platform-test-run")  # its own vhost: only this stack's workers answer
    web, flower, smtp = free_port(), free_port(), free_port()
    env = {**os.environ, "CELERY_BROKER_URL": rabbit.vhost_url(vhost), "PLATFORM_VAR_DIR": str(tmp_path),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}", "DJANGO_SETTINGS_MODULE": "project.settings.local",
           "WEB_PORT": str(web), "FLOWER_PORT": str(flower), "SMTP_SINK_PORT": str(smtp), "EMAIL_PORT": str(smtp),
           "IO_CONCURRENCY": "20"}
    log = open(tmp_path / "run.log", "wb")
    stack = subprocess.Popen(["bash", "-c", f"'{ROOT / 'bin' / 'run'}' | cat"], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "ready in" in (tmp_path / "run.log").read_text(), timeout=180, interval=1,
                 message="the ready line")
        output = (tmp_path / "run.log").read_text()
        # The banner comes once every role is ready, not before.
        ready_at = output.index("ready in")
        for role_ready in ("cpu       | ", "io        | "):
            line = next(line for line in output.splitlines() if line.startswith(role_ready) and " ready." in line)
            assert output.index(line) < ready_at
        assert output.index("Task platform, local stack") < ready_at
        assert output.index("Task platform, local stack") > output.index("web       | ")

        def healthy():
            result = subprocess.run([sys.executable, "manage.py", "health", "--json"], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=60)
            return result.returncode == 0 and json.loads(result.stdout)

        report = wait_for(healthy, timeout=120, interval=2, message="the stack to report healthy")
        assert {w["role"] for w in report["workers"]} == {"cpu", "io"}
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
        assert len(processes) >= 9  # bash, cat, supervisor, web, cpu (+children), io, beat, recorder, flower, sink
        os.killpg(stack.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group (bash, bin/run, cat)
        stack.wait(timeout=60)
        wait_for(lambda: not [pid for pid in processes if alive(pid)], timeout=30, message="every process to exit")
        assert all(port_free(port) for port in (web, flower, smtp))
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
        log.close()
        rabbit.delete_vhost(vhost)


def test_a_taken_port_is_one_line_naming_the_variable_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "WEB_PORT": str(port), "FLOWER_PORT": str(free_port()), "SMTP_SINK_PORT": str(free_port()),
               "PLATFORM_VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}
        result = subprocess.run([str(ROOT / "bin" / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert f"port {port}" in line and "(web)" in line and "WEB_PORT" in line
    assert result.stdout == ""  # no banner, no setup: nothing started


@pytest.mark.parametrize("how", ["SIGHUP to the terminal's group", "SIGTERM to the supervisor"])
def test_supervisor_stops_its_children_on_hangup_and_terminate_even_piped(tmp_path, how):
    port = free_port()
    env = {**os.environ, "SMTP_SINK_PORT": str(port), "PLATFORM_VAR_DIR": str(tmp_path),
           "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    log = open(tmp_path / "out.log", "wb")
    shell = subprocess.Popen(["bash", "-c", "python bin/supervise.py smtp-sink | cat"], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "ready in" in (tmp_path / "out.log").read_text(), timeout=60, message="the sink ready")
        processes = descendants(shell.pid)
        supervisor = next(pid for pid in processes if "supervise.py" in Path(f"/proc/{pid}/cmdline").read_text())
        if how.startswith("SIGHUP"):
            os.killpg(shell.pid, signal.SIGHUP)  # the terminal closed: cat dies too, our stdout with it
        else:
            os.kill(supervisor, signal.SIGTERM)
        wait_for(lambda: not [pid for pid in processes if alive(pid)], timeout=30, message="every process to exit")
        assert port_free(port)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        log.close()


def test_supervisor_stops_the_stack_when_nobody_reads_its_output(tmp_path):
    """`bin/run | head -1`: once the reader is gone, a stack nobody can see is stopped, not left running."""
    port = free_port()
    env = {**os.environ, "SMTP_SINK_PORT": str(port), "PLATFORM_VAR_DIR": str(tmp_path),
           "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    shell = subprocess.Popen(["bash", "-c", "python bin/supervise.py smtp-sink | head -1"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = shell.communicate(timeout=90)  # returns once the supervisor, too, has exited
        assert out.decode().startswith("smtp-sink ")
        assert wait_for(lambda: port_free(port), timeout=30, message="the sink's port to be free")
        assert not subprocess.run(["pgrep", "-f", f"smtp_sink --port {port}"], capture_output=True).stdout
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
