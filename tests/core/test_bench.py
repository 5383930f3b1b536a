"""The benchmark suite runs end to end at a tiny size (the figures come from full runs: docs/benchmarks.md).

Timings are not asserted: only that every measurement ran and produced a positive figure and its ratio.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.workers import ROOT

pytestmark = pytest.mark.slow


def test_bench_run_at_a_tiny_size_writes_every_figure_and_ratio(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'bench.sqlite3'}"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    run = subprocess.run([sys.executable, "bench/run.py", "--size", "tiny", "--out", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    figures = result["figures"]
    for name in ("raw_publish_confirmed", "raw_publish_confirmed_task_message", "plain_apply_async_confirmed",
                 "platform_apply_async", "platform_enqueue_many", "plain_drain_prefork_c2", "platform_drain_prefork_c2", "plain_drain_eventlet_c100",
                 "platform_drain_eventlet_c100", "platform_drain_eventlet_c100_sleep100ms",
                 "platform_drain_prefork_c2_results_postgres", "dramatiq_drain_p2_t1", "dramatiq_drain_p2_t8"):
        assert figures[name] > 0, name
    for name in ("platform_latency_idle_prefork", "dramatiq_latency_idle_p2_t1"):
        assert figures[name]["p99_ms"] >= figures[name]["p50_ms"] > 0, name
    assert len(result["ratios"]) >= 8 and all(value > 0 for value in result["ratios"].values())
    report = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- bench:begin -->" in report and "bulk enqueue / plain apply_async" in report
    assert "Dramatiq 2 processes x 1 thread" in report
