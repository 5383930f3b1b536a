"""What a new user meets first (issue 16): offline API docs, an API token, a README that matches what the
commands print, docs without dangling references, and `manage.py migrate` working in a fresh checkout."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

ROOT = Path(settings.BASE_DIR)


def test_the_api_docs_page_loads_everything_from_our_own_static_files():
    page = Client(HTTP_HOST="127.0.0.1").get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", html) == []  # no CDN, no web font, no external host
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:  # each one is a file this project serves
        assert asset.startswith(settings.STATIC_URL if settings.STATIC_URL.startswith("/") else "/" + settings.STATIC_URL)
        assert finders.find(asset.split("/static/", 1)[1]), asset


@pytest.mark.django_db
def test_api_token_creates_once_then_shows_the_same_key_and_the_key_works(django_user_model, capsys):
    django_user_model.objects.create_user("ops", password="x", is_staff=True)
    call_command("api_token", "ops")
    key = capsys.readouterr().out.strip()
    call_command("api_token", "ops")
    assert capsys.readouterr().out.strip() == key  # show, not replace
    client = APIClient()
    assert client.get("/api/v1/tasks/").status_code in (401, 403)
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/tasks/").status_code == 200
    call_command("api_token", "ops", "--rotate")
    assert capsys.readouterr().out.strip() != key
    assert client.get("/api/v1/tasks/").status_code == 401  # the old key stopped working
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("api_token", "nobody")


def test_the_readme_says_how_to_get_a_token_and_call_the_api():
    readme = (ROOT / "README.md").read_text()
    assert "python manage.py api_token" in readme and "Authorization: Token" in readme


@pytest.mark.django_db
def test_the_readme_schedules_line_is_what_a_fresh_seed_prints(capsys):
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.all().delete()
    call_command("seed_schedules")
    printed = capsys.readouterr().out.strip()
    assert printed in (ROOT / "README.md").read_text()


def test_no_doc_points_at_a_report_that_is_not_there():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "(see the report)" not in doc.read_text(), doc


def test_migrate_works_in_a_fresh_checkout_without_var(tmp_path):
    fresh = tmp_path / "checkout" / "var"  # does not exist yet, as in a fresh clone before bin/setup
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(PLATFORM_VAR_DIR=str(fresh), DJANGO_SETTINGS_MODULE="project.settings.local")
    result = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (fresh / "db.sqlite3").exists()


def test_the_local_stack_runs_on_a_vhost_of_its_checkout_by_default():
    env = {k: v for k, v in os.environ.items() if k != "CELERY_BROKER_URL"}
    env["DJANGO_SETTINGS_MODULE"] = "project.settings.local"
    url = subprocess.run([sys.executable, "-c", "import django; django.setup(); from django.conf import settings; "
                          "print(settings.CELERY_BROKER_URL)"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    vhost = url.rsplit("/", 1)[1]
    assert vhost.startswith(f"platform-{ROOT.name}-") and vhost != ""  # not the shared default vhost "/"


def test_local_vhost_creates_the_missing_vhost_with_rabbitmqctl():
    import uuid

    from tests.support import rabbit

    vhost = f"platform-test-local-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.local", "CELERY_BROKER_URL": rabbit.vhost_url(vhost)}
    try:
        result = subprocess.run([sys.executable, "manage.py", "local_vhost"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"created RabbitMQ vhost {vhost}" in result.stdout
        assert vhost in rabbit.rabbitmqctl("list_vhosts").split()
        again = subprocess.run([sys.executable, "manage.py", "local_vhost"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0 and again.stdout == ""  # there already: nothing to do
    finally:
        rabbit.delete_vhost(vhost)
