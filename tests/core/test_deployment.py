"""compose/ and production settings: checked without a Docker engine (none runs on the CI machine)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from django.conf import settings

from project import topology

ROOT = Path(settings.BASE_DIR)
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_parses_and_every_service_command_names_an_existing_start_script():
    services = compose_services()
    assert {"rabbitmq", "postgres", "web", "cpu", "io", "beat", "recorder", "flower"} <= set(services)
    for name, service in services.items():
        if name in ("rabbitmq", "postgres"):
            continue
        [command] = service["command"]
        script = ROOT / command.removeprefix("/app/")
        assert script.is_file() and os.access(script, os.X_OK), f"{name}: {command} is not an executable start script"
    assert "management" in services["rabbitmq"]["image"]


def test_every_declared_queue_is_consumed_by_a_role_that_compose_runs():
    services = compose_services()
    consumed = set()
    for name, service in services.items():
        script = service.get("command", [""])[0]
        if script.endswith(("/cpu", "/io")):
            consumed |= set(re.search(r"-Q ([\w,]+)", (ROOT / script.removeprefix("/app/")).read_text()).group(1).split(","))
    assert consumed == {lane.name for lane in topology.LANES}


def test_compose_has_no_default_secrets_and_keeps_flower_authenticated_and_local():
    text = COMPOSE.read_text()
    for secret in ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "FLOWER_BASIC_AUTH"):
        assert re.search(rf"\${{{secret}:\?", text), f"{secret} must be required, not defaulted"
    flower = compose_services()["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert "--basic-auth" in (ROOT / "compose" / "start" / "flower").read_text()


def run_manage(*args, env=None):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_production_settings_pass_check_deploy():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env={
        "DJANGO_SETTINGS_MODULE": "project.settings.production",
        "DJANGO_SECRET_KEY": "x" * 60 + "-not-a-real-key-but-long-and-random-enough-3f9a",
        "CELERY_BROKER_URL": "amqp://platform:secret@rabbitmq:5672//",
        "DJANGO_ALLOWED_HOSTS": "platform.example.com",
    })
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_secrets():
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "CELERY_BROKER_URL")}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "DJANGO_SETTINGS_MODULE": "project.settings.production"}, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set in production" in result.stderr


def test_flower_refuses_to_start_without_authentication():
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run([str(ROOT / "compose" / "start" / "flower")], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode != 0
    assert "Flower never runs without authentication" in result.stderr
