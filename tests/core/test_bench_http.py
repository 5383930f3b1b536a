"""The HTTP load benchmark runs end to end at a tiny size, with the 429 phase: wrk against the web role
started from compose/start/web, an io worker delivering to an SMTP server (figures: docs/benchmarks.md).

Timings are not asserted. What is: every server answered, every accepted message was delivered exactly
once (the benchmark exits non-zero otherwise), and under load a full queue is 429 with Retry-After and
the reason, then accepted again once the queue drains.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.support.workers import ROOT

pytestmark = pytest.mark.slow


def test_http_load_at_a_tiny_size_delivers_every_accepted_message_once_and_429s_a_full_queue(tmp_path):
    db = settings.DATABASES["default"]
    # PostgreSQL, as the web role runs in production (the benchmark makes and drops its own database there).
    url = f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/postgres" \
        if db["ENGINE"].endswith("postgresql") else "postgres://postgres@127.0.0.1:5432/postgres"
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = tmp_path / "http.json"
    run = subprocess.run([sys.executable, "bench/http_load.py", "--size", "tiny", "--servers", "platform,asgi-1",
                          "--backpressure", "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["servers"]) == {"platform", "asgi-1"}
    for runs in figures["servers"].values():
        assert {"task GET", "mail GET", "mail POST", "mail POST delivering"} == set(runs)
        for result in runs.values():
            assert result["requests"] > 0 and result["too_many"] == result["other"] == 0, result
        for label in ("mail POST", "mail POST delivering"):
            d = runs[label]["delivery"]
            # wrk does not see the answers in flight when it stops: at most one per connection more rows
            assert d["accepted"] <= d["sent"] <= d["accepted"] + figures["connections"], d
            assert d["stored"] == d["sent"] == d["received"] > 0 and not d["other"], d
    assert figures["smtp"]["received"] == figures["smtp"]["distinct_message_ids"]

    bp = figures["backpressure"]
    full, drained = bp["full"], bp["drained"]
    assert full["too_many"] > 0 and full["other"] == 0, full
    # RabbitMQ admits the publishes racing the bound: a few more than it, never one per request
    assert 0 < full["created"] < bp["bound"] + figures["connections"], full
    sample = full["sample_429"]
    assert sample["retry_after"].isdigit() and sample["body"]["code"] == "queue_full"
    assert "queue mail is full" in sample["body"]["detail"], sample
    assert drained["created"] > 0, drained
    d = bp["delivery"]
    assert d["accepted"] <= d["sent"] == d["received"] and d["stored"] == d["sent"] + d["queued"] and not d["other"], d
