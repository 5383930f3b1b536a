"""The benchmark runs end to end at a tiny size (speed is measured by bench/, never asserted here)."""
import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.workers import database_url

pytestmark = pytest.mark.slow


def test_benchmark_runs_and_stores_every_recorded_event(tmp_path):
    from django.db import connection

    out = tmp_path / "bench.json"
    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict),
           "DJANGO_SETTINGS_MODULE": "project.settings.test"}
    proc = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "bench" / "tracing_throughput.py"), "--events", "1000",
         "--calls", "200", "--timeout", "120", "--json-out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the benchmark stops its worker and drops its vhost and database
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-5000:]
    report = json.loads(out.read_text())
    assert report["sustained"]["stored"] == 1000 and report["sustained"]["dropped"] == 0
    # Recorded by the default two spawned recorder processes, each publishing its share.
    assert report["recorders"] == 2 and len(report["recorder_processes"]) == 2
    assert report["sustained"]["published_events"] == 1000
    assert report["sustained"]["events_per_s_recorded_to_stored"] > 0
    assert report["recording_isolated"]["span_us"] > 0 and "raw_kombu_publish_confirmed_events_per_s" in report["baselines"]
