"""bench/mail_throughput.py runs end to end at a tiny size (speed is measured by bench/, never asserted here):
every lane and the peer deliver, and the SMTP server received each message once."""
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.workers import database_url

pytestmark = pytest.mark.slow


def test_mail_benchmark_runs_every_lane_and_the_peer(tmp_path):
    from django.db import connection

    env = {**os.environ, "DATABASE_URL": database_url(connection.settings_dict),
           "DJANGO_SETTINGS_MODULE": "project.settings.test", "BENCH_LOG_LEVEL": "INFO"}
    env.pop("CELERY_BROKER_URL", None)  # the bench makes a vhost of its own
    proc = subprocess.Popen(
        [sys.executable, str(settings.BASE_DIR / "bench" / "mail_throughput.py"), "-c", "20", "-n", "30",
         "--baseline-messages", "10", "--batch-size", "4", "--lanes", "bulk,batched,transactional",
         "--peer", "1x2x10", "--smtp-delay", "0.01"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the bench stops its worker and drops its vhost and database
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-5000:]
    assert "SMTP server received 120 messages; sent 120 (each once)" in output, output[-3000:]
    for lane in ("bulk", "batched", "transactional"):
        assert re.search(rf"^{lane} +delivery: \d+\.\d msg/s", output, re.M), output[-3000:]
    assert re.search(r"^post_office 1x2x10 \(peer\): \d+\.\d msg/s \(30 of 30 sent", output, re.M), output[-3000:]
