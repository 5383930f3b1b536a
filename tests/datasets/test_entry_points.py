"""The three entry points (HTTP upload, admin, manage.py dataset_import) through a real worker."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from apps.datasets.models import Dataset, Status
from tests.datasets.conftest import settled, write_csv
from tests.support.workers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_user():
    return get_user_model().objects.create_superuser("ada", "ada@example.com", "pw")


@pytest.fixture
def api(admin_user):
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_http_upload_progress_and_profile(cpu_worker, api, tmp_path):
    content = write_csv(tmp_path / "up.csv", 1_000).read_bytes()
    response = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("orders.csv", content), "chunk_bytes": 8192},
                        format="multipart")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["name"] == "orders" and body["version"] == 1 and body["status"] in ("QUEUED", "RUNNING", "READY")
    assert body["task"]["task_id"]

    early = api.get(f"/api/v1/datasets/{body['id']}/profile/")
    if Dataset.objects.get(pk=body["id"]).is_active:
        assert early.status_code == 409 and "READY" in early.json()["detail"]

    settled(body["id"])
    detail = api.get(f"/api/v1/datasets/{body['id']}/").json()
    assert detail["status"] == "READY" and detail["progress"]["rows_processed"] == 1_000
    assert detail["task"]["state"] == "SUCCESS"
    profile = api.get(detail["profile_url"]).json()["profile"]
    assert profile["rows"] == 1_000 and [c["name"] for c in profile["columns"]] == ["id", "group", "amount", "day", "flag"]
    assert api.post(f"/api/v1/datasets/{body['id']}/cancel/").status_code == 409


def test_http_errors_are_json_that_say_what_was_wrong(api):
    empty = api.post("/api/v1/datasets/", {"file": SimpleUploadedFile("e.csv", b"")}, format="multipart")
    assert empty.status_code == 400 and "empty" in json.dumps(empty.json())
    missing = api.post("/api/v1/datasets/", {}, format="multipart")
    assert missing.status_code == 400 and "file" in missing.json()
    assert api.get("/api/v1/datasets/999999/").status_code == 404
    assert APIClient().get("/api/v1/datasets/").status_code in (401, 403)


def test_admin_import_and_profile_page_with_charts(cpu_worker, client, admin_user, tmp_path):
    client.force_login(admin_user)
    path = write_csv(tmp_path / "adm.csv", 500)
    assert client.get("/admin/datasets/dataset/add/").status_code == 302
    page = client.get("/admin/datasets/dataset/import/")
    assert page.status_code == 200 and b"upload" in page.content
    assert b"give either" in client.post("/admin/datasets/dataset/import/", {}).content
    response = client.post("/admin/datasets/dataset/import/", {"path": str(path), "name": "from-admin"})
    assert response.status_code == 302
    dataset = Dataset.objects.get(name="from-admin")
    running_page = client.get(f"/admin/datasets/dataset/{dataset.pk}/change/")
    assert running_page.status_code == 200
    settled(dataset.pk)
    page = client.get(f"/admin/datasets/dataset/{dataset.pk}/change/").content.decode()
    assert "Profile: 500 rows × 5 columns" in page
    assert page.count('aria-label="histogram"') == 2  # id and amount
    assert 'aria-label="most frequent values"' in page
    listing = client.get("/admin/datasets/dataset/").content.decode()
    assert "from-admin" in listing and 'aria-label="progress"' in listing


def test_import_command_waits_prints_json_and_fails_non_zero(cpu_worker, broker_url, worker_db_url, tmp_path):
    path = write_csv(tmp_path / "cmd.csv", 300)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": broker_url,
           "DATABASE_URL": worker_db_url}
    ok = subprocess.run([sys.executable, "manage.py", "dataset_import", str(path), "--name", "cmd", "--json"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == 300
    assert "rows 300/300" in ok.stderr  # the progress line

    bad = subprocess.run([sys.executable, "manage.py", "dataset_import", str(tmp_path / "nope.csv"), "--wait"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "FAILED: file not found" in bad.stderr
    assert Dataset.objects.get(name="nope").status == Status.FAILED


def test_import_command_rejects_bad_options():
    with pytest.raises(CommandError, match="chunk_bytes must be a number >= 1024"):
        call_command("dataset_import", "/tmp/x.csv", "--chunk-bytes", "10")


def test_demo_job_imports_a_generated_csv_and_its_task_succeeds(cpu_worker):
    from celery.result import AsyncResult

    from apps.core import demo
    from tests.support.workers import wait_for

    job = next(j for j in demo.jobs() if j.queue == "dataset" and j.label == "import")
    task_id = job.enqueue(0)
    wait_for(lambda: AsyncResult(task_id).state in ("SUCCESS", "FAILURE"), timeout=120, message="demo import")
    assert AsyncResult(task_id).state == "SUCCESS"
    dataset = Dataset.objects.get(task_id=task_id)
    assert dataset.status == Status.READY and dataset.row_count == 2_000 and dataset.chunks_total >= 2
