"""Flower never runs without authentication: its start script refuses, before starting anything."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_flower_refuses_to_start_without_basic_auth():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run([str(ROOT / "compose" / "start" / "flower")], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "never runs without authentication" in result.stderr


def test_flower_password_stays_out_of_the_process_list(broker_url, tmp_path):
    """`ps` shows every user's command lines: the password goes through the environment, not argv."""
    import signal
    import socket
    import urllib.error
    import urllib.request

    from tests.support.workers import wait_for

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = "not-in-ps-" + os.urandom(4).hex()
    env = {**os.environ, "FLOWER_BASIC_AUTH": f"admin:{password}", "FLOWER_PORT": str(port),
           "CELERY_BROKER_URL": broker_url, "DJANGO_SETTINGS_MODULE": "project.settings.test",
           "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    log = open(tmp_path / "flower.log", "wb")
    flower = subprocess.Popen([str(ROOT / "compose" / "start" / "flower")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            except urllib.error.HTTPError as refused:
                return refused.code  # 401: up, and asking for the password it was given
            except OSError:
                return None
            return 200
        assert wait_for(answers, timeout=60, interval=0.5, message="Flower to listen") == 401
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        assert f"flower --address=127.0.0.1 --port={port}" in ps  # it is there...
        assert password not in ps  # ...without its password
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=30)
        log.close()
